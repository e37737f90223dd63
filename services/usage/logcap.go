package usage

import (
	"context"
	"fmt"
	"maps"
	"sync"
)

// logCaps holds the request-log cap of each workspace as its latest
// records carried it (UsageRecord.request_log_cap). The committer notes
// them; the janitor cuts each capped workspace's log to its cap on every
// trim, so a workspace holds at most its cap plus what it logs in a trim
// interval. A replica knows the caps of the workspaces it logged for since
// it started: those are the logs it can have grown.
type logCaps struct {
	mu   sync.Mutex
	caps map[string]int64
}

// note records the caps of a committed group; a record without one (0)
// puts its workspace back under the store's own bounds.
func (c *logCaps) note(es []*entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.caps == nil {
		c.caps = map[string]int64{}
	}
	for _, e := range es {
		if e.logCap > 0 {
			c.caps[e.ws] = e.logCap
		} else {
			delete(c.caps, e.ws)
		}
	}
}

func (c *logCaps) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.caps)
}

// capLog cuts every capped workspace's request log to its cap.
func (s *Server) capLog(ctx context.Context) error {
	for ws, keep := range s.com.caps.snapshot() {
		n, err := s.rlog.Cap(ctx, ws, int(keep))
		if err != nil {
			return fmt.Errorf("request log cap of a workspace: %w", err)
		}
		if n > 0 {
			s.log.Debug("request log: workspace cut to its cap", "workspace", ws, "cap", keep, "deleted", n)
		}
	}
	return nil
}
