package edge

import (
	"encoding/json"
	"net/http"
	"slices"
)

// modelJSON is one entry of /v1/models, in OpenAI's shape.
type modelJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (rt *route) json() modelJSON {
	return modelJSON{ID: rt.id, Object: "model", Created: rt.created, OwnedBy: rt.provider}
}

// serveModels answers GET /v1/models (the models the key may use) and
// GET /v1/models/{id} (one of them; any other id is not found, whether it
// does not exist or the key may not use it).
func (s *Server) serveModels(w http.ResponseWriter, r *http.Request, id string) {
	c := s.begin(w, r, "GET /v1/models", openaiShape{})
	defer c.end()
	if !c.authorize(http.MethodGet) {
		return
	}
	cat := c.catalog()
	if cat == nil {
		return
	}
	allowed := c.key.GetAllowedModels()
	if id != "" {
		rt := cat.byID[id]
		if rt == nil || len(allowed) > 0 && !slices.Contains(allowed, id) {
			c.fail(modelNotFound(id))
			return
		}
		c.writeJSON(rt.json())
		return
	}
	list := struct {
		Object string      `json:"object"`
		Data   []modelJSON `json:"data"`
	}{Object: "list", Data: []modelJSON{}}
	for _, rt := range cat.list {
		if len(allowed) == 0 || slices.Contains(allowed, rt.id) {
			list.Data = append(list.Data, rt.json())
		}
	}
	c.writeJSON(list)
}

// writeJSON answers 200 with v.
func (c *call) writeJSON(v any) {
	b, _ := json.Marshal(v)
	c.w.Header()["Content-Type"] = []string{"application/json"}
	c.status, c.reason = http.StatusOK, "ok"
	c.w.WriteHeader(http.StatusOK)
	_, _ = c.w.Write(append(b, '\n'))
}
