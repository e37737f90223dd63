package main

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/auth"
)

// usageRecorder is the part of the usage service the edge records to.
type usageRecorder interface {
	RecordUsage(context.Context, *usagev1.RecordUsageRequest) (*usagev1.RecordUsageResponse, error)
}

// localUsage hands the edge's usage batches to the usage service of the
// same process by a direct call: no marshalling and no loopback round trip
// for every record. The service sees the call as over gRPC, service token
// included, and answers with the same status errors.
type localUsage struct {
	srv usageRecorder
	md  metadata.MD // only ever read
}

func newLocalUsage(srv usageRecorder, token string) localUsage {
	return localUsage{srv: srv, md: auth.BearerMD(token)}
}

func (l localUsage) RecordUsage(ctx context.Context, in *usagev1.RecordUsageRequest, _ ...grpc.CallOption) (*usagev1.RecordUsageResponse, error) {
	return l.srv.RecordUsage(metadata.NewIncomingContext(ctx, l.md), in)
}
