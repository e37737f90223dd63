package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/alertbox"
)

// hookReceiver records the webhook-id of every delivery it answers 200.
type hookReceiver struct {
	mu  sync.Mutex
	ids []string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	h.mu.Lock()
	h.ids = append(h.ids, r.Header.Get("webhook-id"))
	h.mu.Unlock()
}

func (h *hookReceiver) got() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.ids...)
}

// TestCreditsAndWebhooksREST drives credits, webhooks and alerts through
// the REST gateway of `keygate up`.
func TestCreditsAndWebhooksREST(t *testing.T) {
	app := MustRunApp(t, "", nil)
	api := "http://" + app.HTTPAddr
	root := app.Config.RootToken
	code, _, body := rest(t, "POST", api+"/v1/workspaces", root, map[string]any{"id": "acme", "name": "Acme"})
	require.Equal(t, http.StatusOK, code, body)

	t.Run("credits", func(t *testing.T) {
		entry := map[string]any{"id": "invoice-1", "kind": "CREDIT_ENTRY_KIND_TOP_UP", "amountUsd": "12.5", "note": "March"}
		code, _, body := rest(t, "POST", api+"/v1/workspaces/acme/credits/entries", root, entry)
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, "12.50", body["entry"].(map[string]any)["amountUsd"])
		code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/credits/entries", root, entry)
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, true, body["replayed"])
		entry["amountUsd"] = "13"
		code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/credits/entries", root, entry)
		require.Equal(t, http.StatusConflict, code, body)
		for _, bad := range []string{"0.0000001", "-1", "1e2", "ten"} {
			code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/credits/entries", root,
				map[string]any{"id": "bad", "kind": "CREDIT_ENTRY_KIND_TOP_UP", "amountUsd": bad})
			require.Equal(t, http.StatusBadRequest, code, "%s: %v", bad, body)
		}
		code, _, body = rest(t, "GET", api+"/v1/workspaces/acme/credits", root, nil)
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, map[string]any{"grantedUsd": "12.50", "spentUsd": "0.00", "balanceUsd": "12.50", "enabled": true}, body)
		code, _, body = rest(t, "GET", api+"/v1/workspaces/acme/credits/entries?pageSize=10", root, nil)
		require.Equal(t, http.StatusOK, code, body)
		require.Len(t, body["entries"], 1)
	})

	rcv := &hookReceiver{}
	srv := httptest.NewServer(rcv)
	t.Cleanup(srv.Close)
	var hook string
	t.Run("webhooks", func(t *testing.T) {
		code, _, body := rest(t, "POST", api+"/v1/workspaces/acme/webhooks", root, map[string]any{"url": "ftp://example.com/"})
		require.Equal(t, http.StatusBadRequest, code, body)
		code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/webhooks", root, map[string]any{"url": srv.URL + "/hook", "description": "ops"})
		require.Equal(t, http.StatusOK, code, body)
		secret := body["secret"].(string)
		require.True(t, strings.HasPrefix(secret, "whsec_"))
		hook = body["webhook"].(map[string]any)["id"].(string)

		code, _, body = rest(t, "GET", api+"/v1/workspaces/acme/webhooks", root, nil)
		require.Equal(t, http.StatusOK, code, body)
		require.Len(t, body["webhooks"], 1)
		require.NotContains(t, body["webhooks"].([]any)[0], "secret")

		code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/webhooks/"+hook+":test", root, map[string]any{})
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, true, body["delivered"], body)
		code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/webhooks/"+hook+":rotateSecret", root, map[string]any{})
		require.Equal(t, http.StatusOK, code, body)
		require.NotEqual(t, secret, body["secret"])
	})

	t.Run("alerts", func(t *testing.T) {
		a := &keystorev1.Alert{Workspace: "acme", Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, LevelId: "acme", Limit: "credits",
			ThresholdPercent: 80, LimitValue: "12.50", Used: "10.00", Period: "never", Time: timestamppb.Now()}
		_, err := alertbox.Raise(t.Context(), app.etcd, a)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			code, _, body := rest(t, "GET", api+"/v1/workspaces/acme/alerts", root, nil)
			require.Equal(t, http.StatusOK, code, body)
			as, _ := body["alerts"].([]any)
			return len(as) == 1 && as[0].(map[string]any)["deliveryState"] == "ALERT_DELIVERY_STATE_DELIVERED"
		}, 20*time.Second, 20*time.Millisecond)
		require.Contains(t, rcv.got(), alertbox.ID(a))
		resp, err := http.Get(api + "/metrics")
		require.NoError(t, err)
		metrics, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Contains(t, string(metrics), `keygate_keystore_alerts_delivered_total{outcome="delivered"`)

		code, _, body := rest(t, "DELETE", api+"/v1/workspaces/acme/webhooks/"+hook, root, nil)
		require.Equal(t, http.StatusOK, code, body)
	})
}
