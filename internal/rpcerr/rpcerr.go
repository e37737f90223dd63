// Package rpcerr is where the errors every service shares become gRPC
// status codes: a missing or wrong credential, a caller that gave up, a
// status from a peer passed on, and anything unexpected (logged with its
// cause, answered as Internal without it). Each service maps its own
// domain errors first and hands the rest to Status.
package rpcerr

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keygate/keygate/pkg/auth"
)

// Status turns err into a gRPC status error. ctx is the call's: a context
// error counts as the caller's only when the call's context ended (an
// inner deadline, such as a storage timeout, is the service's own
// failure). Unexpected errors are logged with their cause under what.
func Status(ctx context.Context, log *slog.Logger, what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, auth.ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return status.FromContextError(ctx.Err()).Err()
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err // a peer's answer, passed on
	}
	log.ErrorContext(ctx, what+" failed", slog.Any("error", err))
	return status.Error(codes.Internal, what+": internal error")
}
