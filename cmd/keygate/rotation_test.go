package main

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/pkg/auth"
)

// TestRootTokenRotation: while a new root token rolls out, the previous one
// is still honoured everywhere a root or service token is checked.
func TestRootTokenRotation(t *testing.T) {
	const previous = "kgr_previous-root-token-0123456789"
	app := MustRunApp(t, "", nil, func(a *App) { a.Config.PreviousRootTokens = []string{previous} })
	api := "http://" + app.HTTPAddr
	for _, tok := range []string{app.Config.RootToken, previous} {
		code, _, body := rest(t, "GET", api+"/v1/workspaces", tok, nil)
		require.Equal(t, http.StatusOK, code, body)
	}
	code, _, _ := rest(t, "GET", api+"/v1/workspaces", "kgr_some-other-token-0123456789", nil)
	require.Equal(t, http.StatusUnauthorized, code)

	cc := grpctest.Dial(t, app.GRPCAddr)
	for tok, want := range map[string]codes.Code{previous: codes.OK, app.Config.RootToken: codes.OK, "wrong-token-0123456789": codes.Unauthenticated} {
		ctx := auth.WithBearer(t.Context(), tok)
		_, err := usagev1.NewUsageServiceClient(cc).GetTotals(ctx, &usagev1.GetTotalsRequest{})
		require.Equal(t, want, status.Code(err), "usage with %q: %v", tok[:8], err)
		_, err = limiterv1.NewLimiterServiceClient(cc).Release(ctx, &limiterv1.ReleaseRequest{})
		require.Equal(t, want, status.Code(err), "limiter with %q: %v", tok[:8], err)
	}
}
