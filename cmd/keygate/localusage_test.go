package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/auth"
)

// tokenRecorder answers as the usage service's token check does.
type tokenRecorder struct{ want string }

func (r tokenRecorder) RecordUsage(ctx context.Context, in *usagev1.RecordUsageRequest) (*usagev1.RecordUsageResponse, error) {
	if auth.BearerFromIncoming(ctx) != r.want {
		return nil, status.Error(codes.Unauthenticated, "wrong token")
	}
	return &usagev1.RecordUsageResponse{Accepted: int32(len(in.GetRecords()))}, nil
}

func TestLocalUsageCarriesTheServiceToken(t *testing.T) {
	t.Parallel()
	req := &usagev1.RecordUsageRequest{Producer: "p", FirstSequence: 1, Records: []*usagev1.UsageRecord{{RequestId: "r"}}}
	resp, err := newLocalUsage(tokenRecorder{want: "root-token"}, "root-token").RecordUsage(t.Context(), req)
	require.NoError(t, err)
	require.EqualValues(t, 1, resp.GetAccepted())

	_, err = newLocalUsage(tokenRecorder{want: "root-token"}, "other").RecordUsage(t.Context(), req)
	require.Equal(t, codes.Unauthenticated, status.Code(err), "the service's own answer comes back as it would over gRPC")
}
