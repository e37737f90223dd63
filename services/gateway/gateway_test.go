package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/grpctest"
	"github.com/keygate/keygate/services/gateway"
)

// recorder is a keystore that records what reached it and answers with a
// chosen error, so the tests see exactly what the gateway forwards.
type recorder struct {
	keystorev1.UnimplementedKeystoreServiceServer
	md       chan metadata.MD
	deadline chan time.Duration
	err      error
}

func (r *recorder) GetKey(ctx context.Context, req *keystorev1.GetKeyRequest) (*keystorev1.GetKeyResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.md <- md
	d, _ := ctx.Deadline()
	r.deadline <- time.Until(d)
	if r.err != nil {
		return nil, r.err
	}
	return &keystorev1.GetKeyResponse{Key: &keystorev1.Key{Id: req.GetKey(), Workspace: req.GetWorkspace(), Name: "web"}}, nil
}

func (r *recorder) CreateWorkspace(_ context.Context, req *keystorev1.CreateWorkspaceRequest) (*keystorev1.CreateWorkspaceResponse, error) {
	return &keystorev1.CreateWorkspaceResponse{Workspace: req.GetWorkspace()}, nil
}

func start(t *testing.T, rec *recorder) string {
	t.Helper()
	s := grpctest.Serve(t, func(r grpc.ServiceRegistrar) { keystorev1.RegisterKeystoreServiceServer(r, rec) })
	cc := grpctest.Dial(t, s.Addr)
	h, err := gateway.New(t.Context(), gateway.Config{Keystore: cc, Usage: cc, MaxBodyBytes: 1024, MaxTimeout: 5 * time.Second})
	require.NoError(t, err)
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts.URL
}

func TestForwardsOnlyTheCredentialAndCapsDeadlines(t *testing.T) {
	t.Parallel()
	rec := &recorder{md: make(chan metadata.MD, 1), deadline: make(chan time.Duration, 1)}
	url := start(t, rec)
	req, _ := http.NewRequest("GET", url+"/v1/workspaces/acme/keys/k1", nil)
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("Grpc-Metadata-Authorization", "Bearer forged")
	req.Header.Set("Grpc-Metadata-X-Caller", "root")
	req.Header.Set("Grpc-Timeout", "3600S")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.Contains(t, string(body), `"workspace":"acme"`)

	md := <-rec.md
	require.Equal(t, []string{"Bearer tok"}, md.Get("authorization"))
	require.Empty(t, md.Get("x-caller"))
	require.LessOrEqual(t, <-rec.deadline, 5*time.Second, "client's Grpc-Timeout must not lift the cap")
}

func TestErrorMapping(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code   codes.Code
		status int
		name   string
	}{
		{codes.InvalidArgument, 400, "INVALID_ARGUMENT"},
		{codes.Unauthenticated, 401, "UNAUTHENTICATED"},
		{codes.PermissionDenied, 403, "PERMISSION_DENIED"},
		{codes.NotFound, 404, "NOT_FOUND"},
		{codes.AlreadyExists, 409, "ALREADY_EXISTS"},
		{codes.Aborted, 409, "ABORTED"},
		{codes.FailedPrecondition, 412, "FAILED_PRECONDITION"},
		{codes.ResourceExhausted, 429, "RESOURCE_EXHAUSTED"},
		{codes.Unavailable, 503, "UNAVAILABLE"},
		{codes.Internal, 500, "INTERNAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{md: make(chan metadata.MD, 1), deadline: make(chan time.Duration, 1), err: status.Error(tc.code, "detail for the user")}
			url := start(t, rec)
			resp, err := http.Get(url + "/v1/workspaces/acme/keys/k1")
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, tc.status, resp.StatusCode)
			var body struct {
				Error struct {
					Code    int    `json:"code"`
					Status  string `json:"status"`
					Message string `json:"message"`
				} `json:"error"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			require.Equal(t, tc.status, body.Error.Code)
			require.Equal(t, tc.name, body.Error.Status)
			if tc.code == codes.Internal {
				require.Equal(t, "internal error", body.Error.Message, "internal details stay inside")
			} else {
				require.Equal(t, "detail for the user", body.Error.Message)
			}
		})
	}
}

func TestBodyLimitAndRoutes(t *testing.T) {
	t.Parallel()
	rec := &recorder{md: make(chan metadata.MD, 1), deadline: make(chan time.Duration, 1)}
	url := start(t, rec)

	big := `{"id":"acme","name":"` + strings.Repeat("a", 2048) + `"}`
	resp, err := http.Post(url+"/v1/workspaces", "application/json", strings.NewReader(big))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)

	// Chunked (no Content-Length) bodies are capped too.
	req, _ := http.NewRequest("POST", url+"/v1/workspaces", io.NopCloser(strings.NewReader(big)))
	req.ContentLength = -1
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)

	resp, err = http.Post(url+"/v1/workspaces", "application/json", strings.NewReader(`{"id":"acme","name":"Acme"}`))
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))

	resp, err = http.Post(url+"/v1/workspaces", "application/json", strings.NewReader(`{"id":`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "malformed JSON")

	resp, err = http.Get(url + "/v1/nothing-here")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	resp, err = http.Get(url + "/openapi.json")
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	resp.Body.Close()
	require.Contains(t, doc["paths"], "/v1/workspaces/{workspace}/keys/{key}:rotate")

	resp, err = http.Get(url + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// TestErrorBodyIsJSON: a message quoting what the caller sent, with bytes
// that are not UTF-8 or are control characters, is still a valid JSON body.
func TestErrorBodyIsJSON(t *testing.T) {
	t.Parallel()
	msg := "bad \"x\" \a\v\x00 \xff \U000e0001 <&>"
	rec := &recorder{md: make(chan metadata.MD, 1), deadline: make(chan time.Duration, 1), err: status.Error(codes.InvalidArgument, msg)}
	url := start(t, rec)
	resp, err := http.Get(url + "/v1/workspaces/acme/keys/k1")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var body struct {
		Error struct {
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(raw, &body), "%q", raw)
	require.Equal(t, "INVALID_ARGUMENT", body.Error.Status)
	require.Equal(t, strings.ToValidUTF8(msg, "\uFFFD"), body.Error.Message)
}
