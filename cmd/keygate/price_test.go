package main

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keygate/keygate/pkg/money"
)

// TestPriceChangeUnderLoad changes a model's prices while requests run
// and finds the limiter's budget (read live through explain) and the
// ledger's spend equal to the micro-dollar: each request is priced once,
// from one catalog version, and both record that figure.
func TestPriceChangeUnderLoad(t *testing.T) {
	app := MustRunApp(t, "", nil)
	api, edge, root := "http://"+app.HTTPAddr, "http://"+app.EdgeAddr, app.Config.RootToken
	// Whole micro-dollars per token, so that no rounding hides a mismatch.
	code, _, body := rest(t, "POST", api+"/v1/models", root, map[string]any{"id": "priced", "provider": "mock",
		"inputPricePerMillionUsd": "1.00", "outputPricePerMillionUsd": "2.00"})
	require.Equal(t, http.StatusOK, code, body)
	code, _, body = rest(t, "POST", api+"/v1/workspaces", root, map[string]any{"id": "acme", "name": "Acme"})
	require.Equal(t, http.StatusOK, code, body)
	code, _, body = rest(t, "POST", api+"/v1/workspaces/acme/keys", root, map[string]any{"name": "load",
		"budget": map[string]any{"amountUsd": "1000.00", "resetPeriod": "RESET_PERIOD_MONTHLY"}})
	require.Equal(t, http.StatusOK, code, body)
	secret, keyID := body["secret"].(string), body["key"].(map[string]any)["id"].(string)
	// The edge's catalog learns the new model on its next refresh.
	require.Eventually(t, func() bool {
		code, _, _ := rest(t, "GET", edge+"/v1/models/priced", secret, nil)
		return code == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond)

	const workers, each = 4, 40
	var sent sync.WaitGroup
	var done sync.WaitGroup
	done.Add(workers * each / 2)
	for w := range workers {
		sent.Go(func() {
			for i := range each {
				chat := map[string]any{"model": "priced", "max_tokens": 20 + w,
					"messages": []any{map[string]any{"role": "user", "content": "say " + strconv.Itoa(i)}}}
				code, _, body := rest(t, "POST", edge+"/v1/chat/completions", secret, chat)
				if code != http.StatusOK {
					t.Errorf("worker %d request %d: %d %v", w, i, code, body)
				}
				if i < each/2 {
					done.Done()
				}
			}
		})
	}
	done.Wait() // half the requests are in: change the prices under the rest
	code, _, body = rest(t, "PATCH", api+"/v1/models/priced?updateMask=input_price_per_million_usd,output_price_per_million_usd", root,
		map[string]any{"inputPricePerMillionUsd": "3.00", "outputPricePerMillionUsd": "5.00"})
	require.Equal(t, http.StatusOK, code, body)
	sent.Wait()

	var spend money.Nanos
	require.Eventually(t, func() bool {
		_, _, u := rest(t, "GET", api+"/v1/workspaces/acme/keys/"+keyID+"/usage", root, nil)
		if num(t, u["requestsToday"]) != workers*each {
			return false
		}
		var err error
		spend, err = money.Parse(u["spendUsd"].(string))
		require.NoError(t, err)
		return true
	}, 30*time.Second, 50*time.Millisecond)
	var budget map[string]any
	require.Eventually(t, func() bool {
		code, _, body := rest(t, "GET", api+"/v1/workspaces/acme/keys/"+keyID+":explain", root, nil)
		require.Equal(t, http.StatusOK, code, body)
		for _, l := range body["limits"].([]any) {
			if l := l.(map[string]any); l["kind"] == "LIMIT_KIND_BUDGET" && l["level"] == "LIMIT_LEVEL_KEY" {
				budget = l
			}
		}
		return budget != nil && num(t, budget["reserved"]) == 0 // every request settled
	}, 30*time.Second, 50*time.Millisecond, "budget %v", budget)
	require.Equal(t, spend.Micros(), num(t, budget["used"]), "limiter budget %v µ$, ledger spend %s", budget["used"], spend)
	require.Greater(t, spend, money.Nanos(0))
	fmt.Println("price change under load: budget = spend =", spend.String(), "USD over", workers*each, "requests")
}
