package rpcerr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keygate/keygate/pkg/auth"
)

func TestStatus(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()

	require.NoError(t, Status(live, log, "svc", nil))
	err := Status(live, log, "svc", fmt.Errorf("%w: send a token", auth.ErrUnauthenticated))
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	require.Contains(t, status.Convert(err).Message(), "send a token")

	require.Equal(t, codes.Canceled, status.Code(Status(gone, log, "svc", fmt.Errorf("read: %w", context.Canceled))), "the caller left")
	peer := status.Error(codes.NotFound, "no such key")
	require.Equal(t, peer, Status(live, log, "svc", peer), "a peer's status passes on")
	require.Empty(t, logs.String())

	// The service's own deadline, or anything unexpected: Internal, the
	// cause logged and kept out of the answer.
	for _, cause := range []error{fmt.Errorf("etcd: %w", context.DeadlineExceeded), errors.New("secret-bearing detail")} {
		logs.Reset()
		err = Status(live, log, "svc", cause)
		require.Equal(t, codes.Internal, status.Code(err))
		require.NotContains(t, status.Convert(err).Message(), cause.Error())
		require.Contains(t, logs.String(), "svc failed")
	}
}
