package keystore_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/services/keystore"
)

// delivery is one request a receiver got.
type delivery struct {
	id, timestamp, signature string
	body                     []byte
}

// receiver is a webhook endpoint that records what it gets and answers
// with status(n) for its n-th request (from 1).
type receiver struct {
	url    string
	mu     sync.Mutex
	got    []delivery
	status func(n int) int
}

func newReceiver(tb testing.TB, status func(n int) int) *receiver {
	tb.Helper()
	r := &receiver{status: status}
	if r.status == nil {
		r.status = func(int) int { return http.StatusNoContent }
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, delivery{req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature"), body})
		n := len(r.got)
		r.mu.Unlock()
		w.WriteHeader(r.status(n))
	}))
	tb.Cleanup(srv.Close)
	r.url = srv.URL + "/hooks/keygate"
	return r
}

func (r *receiver) deliveries() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

// verifies reports whether d is signed with secret, as a receiver checks.
func (d delivery) verifies(tb testing.TB, secret string) bool {
	tb.Helper()
	sec, err := strconv.ParseInt(d.timestamp, 10, 64)
	require.NoError(tb, err)
	return keystore.Sign(secret, d.id, time.Unix(sec, 0), d.body) == d.signature
}

func (e *env) createWebhook(tb testing.TB, url string) (*keystorev1.Webhook, string) {
	tb.Helper()
	r, err := e.client.CreateWebhook(e.root(tb), &keystorev1.CreateWebhookRequest{Workspace: "acme", Webhook: &keystorev1.Webhook{Url: url}})
	require.NoError(tb, err)
	return r.GetWebhook(), r.GetSecret()
}

func TestWebhookURLValidation(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	ctx := e.root(t)
	for _, c := range []struct {
		url string
		ok  bool
	}{
		{"https://hooks.example.com/keygate?team=web", true},
		{"http://127.0.0.1:9/x", true},
		{"http://[::1]:8080/", true},
		{"", false},
		{"ftp://example.com/x", false},
		{"javascript:alert(1)", false},
		{"example.com/hook", false},
		{"/relative/path", false},
		{"https://", false},
		{"http://:80/x", false},
		{"https://user:secret@example.com/x", false},
		{"https://user@example.com/x", false},
		{"https://exa mple.com/", false},
		{"https://example.com/" + strings.Repeat("a", 2048), false},
	} {
		t.Run(c.url, func(t *testing.T) {
			_, err := e.client.CreateWebhook(ctx, &keystorev1.CreateWebhookRequest{Workspace: "acme", Webhook: &keystorev1.Webhook{Url: c.url}})
			if c.ok {
				require.NoError(t, err)
				return
			}
			requireCode(t, codes.InvalidArgument, err)
			require.NotContains(t, err.Error(), "secret@", "the URL's password is not echoed")
		})
	}
}

func TestWebhookLifecycle(t *testing.T) {
	e := newEnv(t)
	keys := e.workspace(t, "acme", 0, map[string]keystorev1.Role{"adam": keystorev1.Role_ROLE_ADMIN, "mia": keystorev1.Role_ROLE_MEMBER})
	rcv := newReceiver(t, nil)
	ctx := as(t.Context(), keys["adam"])

	cr, err := e.client.CreateWebhook(ctx, &keystorev1.CreateWebhookRequest{Workspace: "acme", Webhook: &keystorev1.Webhook{Url: rcv.url, Description: "ops"}})
	require.NoError(t, err)
	w, secret := cr.GetWebhook(), cr.GetSecret()
	require.True(t, strings.HasPrefix(secret, "whsec_"), secret)
	require.Regexp(t, `^wh_[0-9a-f]{24}$`, w.GetId())

	_, err = e.client.CreateWebhook(as(t.Context(), keys["mia"]), &keystorev1.CreateWebhookRequest{Workspace: "acme", Webhook: &keystorev1.Webhook{Url: rcv.url}})
	requireCode(t, codes.PermissionDenied, err)
	_, err = e.client.ListWebhooks(as(t.Context(), keys["mia"]), &keystorev1.ListWebhooksRequest{Workspace: "acme"})
	requireCode(t, codes.PermissionDenied, err)

	l, err := e.client.ListWebhooks(ctx, &keystorev1.ListWebhooksRequest{Workspace: "acme"})
	require.NoError(t, err)
	require.Len(t, l.GetWebhooks(), 1)
	require.NotContains(t, l.String(), secret[6:20], "listing shows no secret")

	t.Run("test delivery is signed", func(t *testing.T) {
		tr, err := e.client.TestWebhook(ctx, &keystorev1.TestWebhookRequest{Workspace: "acme", Webhook: w.GetId()})
		require.NoError(t, err)
		require.True(t, tr.GetDelivered(), tr.GetError())
		require.Equal(t, int32(204), tr.GetStatusCode())
		d := rcv.deliveries()[0]
		require.True(t, d.verifies(t, secret))
		var body map[string]any
		require.NoError(t, json.Unmarshal(d.body, &body))
		require.Equal(t, true, body["test"])
		require.Equal(t, "limit.threshold", body["type"])
		require.Equal(t, d.id, body["id"])
		require.Equal(t, strconv.FormatInt(epoch.Unix(), 10), d.timestamp)
	})

	t.Run("rotation retires the old secret", func(t *testing.T) {
		e.clock.Advance(time.Minute)
		rr, err := e.client.RotateWebhookSecret(ctx, &keystorev1.RotateWebhookSecretRequest{Workspace: "acme", Webhook: w.GetId()})
		require.NoError(t, err)
		require.NotEqual(t, secret, rr.GetSecret())
		require.True(t, rr.GetWebhook().GetSecretTime().AsTime().After(w.GetSecretTime().AsTime()))
		_, err = e.client.TestWebhook(ctx, &keystorev1.TestWebhookRequest{Workspace: "acme", Webhook: w.GetId()})
		require.NoError(t, err)
		got := rcv.deliveries()
		d := got[len(got)-1]
		require.True(t, d.verifies(t, rr.GetSecret()))
		require.False(t, d.verifies(t, secret), "the old secret signs nothing after rotation")
	})

	t.Run("unreachable receiver", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		dead := srv.URL
		srv.Close()
		cr, err := e.client.CreateWebhook(ctx, &keystorev1.CreateWebhookRequest{Workspace: "acme", Webhook: &keystorev1.Webhook{Url: dead}})
		require.NoError(t, err)
		tr, err := e.client.TestWebhook(ctx, &keystorev1.TestWebhookRequest{Workspace: "acme", Webhook: cr.GetWebhook().GetId()})
		require.NoError(t, err)
		require.False(t, tr.GetDelivered())
		require.Zero(t, tr.GetStatusCode())
		require.NotEmpty(t, tr.GetError())
		require.NotContains(t, tr.GetError(), "whsec_")
	})

	t.Run("delete", func(t *testing.T) {
		_, err := e.client.DeleteWebhook(ctx, &keystorev1.DeleteWebhookRequest{Workspace: "acme", Webhook: w.GetId()})
		require.NoError(t, err)
		_, err = e.client.DeleteWebhook(ctx, &keystorev1.DeleteWebhookRequest{Workspace: "acme", Webhook: w.GetId()})
		requireCode(t, codes.NotFound, err)
		_, err = e.client.TestWebhook(ctx, &keystorev1.TestWebhookRequest{Workspace: "acme", Webhook: "nonsense"})
		requireCode(t, codes.NotFound, err)
	})

	ev, err := e.client.ListAuditEvents(e.root(t), &keystorev1.ListAuditEventsRequest{Workspace: "acme"})
	require.NoError(t, err)
	var actions []string
	for _, a := range ev.GetEvents() {
		if strings.HasPrefix(a.GetAction(), "webhook.") {
			actions = append(actions, a.GetAction())
		}
		require.NotContains(t, a.String(), "whsec_", "no secret in the audit log")
	}
	require.Equal(t, []string{"webhook.delete", "webhook.create", "webhook.rotate_secret", "webhook.create"}, actions)
}

// TestWebhookRedirectNotFollowed: a redirect is a failed delivery; the
// signed alert never reaches the URL it points to.
func TestWebhookRedirectNotFollowed(t *testing.T) {
	e := newEnv(t)
	e.workspace(t, "acme", 0, nil)
	target := newReceiver(t, nil)
	redirect := httptest.NewServer(http.RedirectHandler(target.url, http.StatusTemporaryRedirect))
	t.Cleanup(redirect.Close)
	w, _ := e.createWebhook(t, redirect.URL)
	tr, err := e.client.TestWebhook(e.root(t), &keystorev1.TestWebhookRequest{Workspace: "acme", Webhook: w.GetId()})
	require.NoError(t, err)
	require.False(t, tr.GetDelivered())
	require.Equal(t, int32(http.StatusTemporaryRedirect), tr.GetStatusCode())
	require.Empty(t, target.deliveries())
}
