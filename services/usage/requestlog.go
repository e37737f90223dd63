package usage

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/keygate/keygate/services/usage/internal/reqlog"
)

// RequestLogStore is a request log the caller opened and must close.
type RequestLogStore interface {
	RequestLog
	Close() error
}

// DefaultRequestLogBytes bounds the embedded request log's disk use.
const DefaultRequestLogBytes = 10 << 30

// OpenRequestLog opens the request log: the embedded store in dir when url
// is empty, or the PostgreSQL database at url (postgres://…). maxBytes
// bounds the embedded store (0 = DefaultRequestLogBytes).
func OpenRequestLog(ctx context.Context, url, dir string, maxBytes int64, log *slog.Logger) (RequestLogStore, error) {
	switch {
	case url == "":
		if maxBytes == 0 {
			maxBytes = DefaultRequestLogBytes
		}
		return reqlog.OpenPebble(dir, maxBytes, log)
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return reqlog.OpenPostgres(ctx, url, log)
	default:
		return nil, fmt.Errorf("usage: request log %q: want empty (embedded) or a postgres:// URL", redactURL(url))
	}
}

// redactURL drops everything after the scheme: a URL may carry a password.
func redactURL(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		return u[:i+3] + "…"
	}
	return "…"
}
