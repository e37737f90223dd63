package edge

import (
	"errors"
	"net/http"
	"strings"
	"time"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// presentedKey is the key a client sent: "Authorization: Bearer <key>"
// (OpenAI's clients), "x-api-key" (Anthropic's) or "api-key" (Azure-style
// clients).
func presentedKey(r *http.Request) string {
	if a := r.Header.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	if k := r.Header.Get("X-Api-Key"); k != "" {
		return strings.TrimSpace(k)
	}
	return strings.TrimSpace(r.Header.Get("Api-Key"))
}

// authenticate verifies the key and answers when it is not usable.
func (c *call) authenticate() bool {
	secret := presentedKey(c.r)
	if secret == "" {
		c.fail(apiError{http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
			"You didn't provide an API key. Send it as 'Authorization: Bearer <key>' (or in the 'x-api-key' or 'api-key' header)."})
		return false
	}
	ver, err := c.s.cfg.Verifier.Verify(c.ctx, secret)
	switch {
	case errors.Is(err, c.s.cfg.ErrInvalidKey):
		c.fail(invalidKey())
		return false
	case err != nil:
		// At most one line a minute: an outage is every request at once
		// (the key cache logs its own state changes).
		now := c.s.clock.Now().UnixNano()
		if last := c.s.ksLogged.Load(); now-last >= int64(time.Minute) && c.s.ksLogged.CompareAndSwap(last, now) {
			c.s.log.Warn("edge: key verification unavailable; answering 503 keystore_unavailable for keys it cannot verify", "request_id", c.id, "err", err)
		}
		c.fail(apiError{http.StatusServiceUnavailable, "server_error", "keystore_unavailable",
			"The key service is unavailable; please retry shortly."})
		return false
	}
	key := ver.Levels.Key
	// The verifier checks these; checking again is cheap and guards against
	// a cache that missed an expiry.
	if st := key.GetState(); st == keystorev1.KeyState_KEY_STATE_DISABLED || st == keystorev1.KeyState_KEY_STATE_EXPIRED ||
		(key.GetExpireTime() != nil && !c.s.clock.Now().Before(key.GetExpireTime().AsTime())) {
		c.fail(invalidKey())
		return false
	}
	if key.GetKind() == keystorev1.KeyKind_KEY_KIND_ADMIN {
		c.fail(apiError{http.StatusForbidden, "permission_error", "permission_denied",
			"Admin keys manage keygate and cannot be used for inference; use a standard key."})
		return false
	}
	c.ver, c.key = ver, key
	return true
}

func invalidKey() apiError {
	return apiError{http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
		"Incorrect API key provided, or the key is disabled, expired or deleted. Check the key in the keygate console."}
}
