package client_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/client"
)

const root = "kgr_sdk-test-root-token-0123456789"

// startKeygate builds the keygate binary and runs `keygate up` on free
// loopback ports in a temp dir; it returns the gRPC address.
func startKeygate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "keygate")
	build := exec.Command("go", "build", "-o", bin, "github.com/keygate/keygate/cmd/keygate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build keygate: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "up", "--data-dir", filepath.Join(dir, "data"),
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--edge-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--etcd-client-url", "http://127.0.0.1:0", "--etcd-peer-url", "http://"+freeAddr(t))
	cmd.Env = append(os.Environ(), "KEYGATE_ROOT_TOKEN="+root)
	out, err := cmd.StderrPipe()
	require.NoError(t, err)
	cmd.Stdout = cmd.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var rec struct {
				Msg  string `json:"msg"`
				GRPC string `json:"grpc"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "keygate serving" {
				addr <- rec.GRPC
			}
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(2 * time.Minute):
		t.Fatal("keygate up did not start")
		return ""
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// TestClient drives every SDK call against a real keygate.
func TestClient(t *testing.T) {
	addr := startKeygate(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := client.New(addr, root, client.WithWorkspace("sdk"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.Equal(t, "sdk", c.Workspace())
	_, err = c.Keystore.CreateWorkspace(ctx, &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{Id: "sdk", Name: "SDK"}})
	require.NoError(t, err)

	key, secret, err := c.CreateKey(ctx, "web", client.KeySpec{Limits: &typev1.Limits{Rpm: 60}})
	require.NoError(t, err)
	require.NotEmpty(t, secret)
	got, err := c.GetKey(ctx, key.GetId())
	require.NoError(t, err)
	require.Equal(t, "web", got.GetName())
	require.EqualValues(t, 60, got.GetGlobalLimits().GetRpm())

	require.NoError(t, c.SetRequestsPerMinute(ctx, key.GetId(), 10, ""))
	require.NoError(t, c.SetTokensPerDay(ctx, key.GetId(), 5000, ""))
	require.NoError(t, c.SetRequestsPerDay(ctx, key.GetId(), 7, "mock-small"))
	require.NoError(t, c.SetTokensPerMinute(ctx, key.GetId(), 900, "mock-small"))
	require.NoError(t, c.SetBudget(ctx, key.GetId(), "5.25", typev1.ResetPeriod_RESET_PERIOD_DAILY))
	require.NoError(t, c.SetTokenCap(ctx, key.GetId(), 100_000, typev1.ResetPeriod_RESET_PERIOD_MONTHLY))
	got, err = c.GetKey(ctx, key.GetId())
	require.NoError(t, err)
	require.EqualValues(t, 10, got.GetGlobalLimits().GetRpm(), "the global rpm changed")
	require.EqualValues(t, 5000, got.GetGlobalLimits().GetTpd(), "and the other limits stayed")
	require.Len(t, got.GetModelLimits(), 1)
	require.Equal(t, "mock-small", got.GetModelLimits()[0].GetModel())
	require.EqualValues(t, 7, got.GetModelLimits()[0].GetLimits().GetRpd())
	require.EqualValues(t, 900, got.GetModelLimits()[0].GetLimits().GetTpm())
	require.Equal(t, "5.25", got.GetBudget().GetAmountUsd())
	require.EqualValues(t, 100_000, got.GetTokenCap().GetTokens())

	require.NoError(t, c.SetEnabled(ctx, key.GetId(), false))
	got, err = c.GetKey(ctx, key.GetId())
	require.NoError(t, err)
	require.False(t, got.GetEnabled())
	require.NoError(t, c.SetEnabled(ctx, key.GetId(), true))

	rotated, newSecret, err := c.Rotate(ctx, key.GetId(), timestamppb.New(time.Now().Add(time.Hour)))
	require.NoError(t, err)
	require.NotEqual(t, secret, newSecret)
	require.Equal(t, key.GetId(), rotated.GetId())

	u, err := c.GetUsage(ctx, key.GetId(), "")
	require.NoError(t, err)
	require.Zero(t, u.GetRequestsToday())

	require.NoError(t, c.Expire(ctx, key.GetId()))
	got, err = c.GetKey(ctx, key.GetId())
	require.NoError(t, err)
	require.Equal(t, keystorev1.KeyState_KEY_STATE_EXPIRED, got.GetState())
	require.NoError(t, c.Delete(ctx, key.GetId()))
	_, err = c.GetKey(ctx, key.GetId())
	require.Equal(t, codes.NotFound, status.Code(err))

	// Bad input is the caller's error, named; a wrong credential is refused.
	_, _, err = c.CreateKey(ctx, "bad\xff", client.KeySpec{})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	bad, err := client.New(addr, "kgr_wrong-token-wrong-token-0000", client.WithWorkspace("sdk"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = bad.Close() })
	_, err = bad.GetKey(ctx, "anything")
	require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
}
