package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
)

// readBody reads the body under the size cap.
func (c *call) readBody() ([]byte, bool) {
	limit := c.s.cfg.MaxBodyBytes
	if c.r.ContentLength > limit {
		c.fail(tooLarge(limit))
		return nil, false
	}
	var buf bytes.Buffer
	if c.r.ContentLength > 0 {
		buf.Grow(int(c.r.ContentLength) + 1)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(c.w, c.r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			c.fail(tooLarge(limit))
		} else {
			c.fail(badRequest("Could not read the request body."))
		}
		return nil, false
	}
	return buf.Bytes(), true
}

func tooLarge(limit int64) apiError {
	return apiError{http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
		"The request body is larger than the limit of " + strconv.FormatInt(limit, 10) + " bytes."}
}

// decodeBody decodes a JSON object into v, refusing a top-level key that
// encoding/json would fold onto one of fields without being its exact
// name: providers read keys exactly, so {"model":"a","Model":"b"} would be
// authorised and priced as b but served as a.
func decodeBody(body []byte, v any, fields []string) *apiError {
	if err := json.Unmarshal(body, v); err != nil {
		msg := "We could not parse the JSON body of your request: it must be a JSON object."
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok && te.Field != "" {
			msg = "Invalid type for '" + te.Field + "': got a JSON " + te.Value + "."
		}
		return invalid(msg)
	}
	if k, ok := caseVariant(body, fields); ok {
		return invalid("Unrecognized request argument '" + k + "': JSON keys are case-sensitive.")
	}
	return nil
}

func invalid(msg string) *apiError {
	e := badRequest(msg)
	return &e
}

// caseVariant finds a top-level key that folds onto one of fields without
// being its exact name. body is valid JSON (decodeBody decoded it).
func caseVariant(body []byte, fields []string) (string, bool) {
	var found string
	members(body, func(k string, _ []byte) bool {
		for _, f := range fields {
			if k != f && strings.EqualFold(k, f) {
				found = k
				return false
			}
		}
		return true
	})
	return found, found != ""
}

func absent(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

func nonEmptyArray(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) >= 2 && t[0] == '[' && len(bytes.TrimSpace(t[1:len(t)-1])) > 0
}

// setFields is body with the given top-level fields replaced (values are
// JSON); the rest of the object is kept as sent.
func setFields(body []byte, fields map[string]json.RawMessage) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	for k, v := range fields {
		m[k] = v
	}
	return json.Marshal(m)
}

// renameOnly is the rewrite of a dialect whose providers report usage
// unasked: only the model is renamed.
type renameOnly struct{}

func (renameOnly) rewrite(body []byte, p *parsed, upstreamModel string) ([]byte, error) {
	if upstreamModel == p.model {
		return body, nil
	}
	return setFields(body, map[string]json.RawMessage{"model": jsonString(upstreamModel)})
}

// jsonString is s as a JSON string.
func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

var typePrefix = []byte(`{"type":"`)

// eventType is the "type" of a streamed event's data (OpenAI's Responses
// and Anthropic's Messages events both name theirs). Providers write it
// first, which a byte scan reads without decoding the event; anything
// else is decoded.
func eventType(data []byte) []byte {
	if rest, ok := bytes.CutPrefix(data, typePrefix); ok {
		if i := bytes.IndexByte(rest, '"'); i >= 0 && bytes.IndexByte(rest[:i], '\\') < 0 {
			return rest[:i]
		}
	}
	var env struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(data, &env)
	return []byte(env.Type)
}

// carriesText reports whether an event has a non-empty string under one of
// the quoted names in fields. A quoted name cannot occur inside a JSON
// string (its quotes would be escaped), so a byte scan finds only keys.
func carriesText(data []byte, fields [][]byte) bool {
	for _, name := range fields {
		for rest := data; ; {
			i := bytes.Index(rest, name)
			if i < 0 {
				break
			}
			rest = rest[i+len(name):]
			v := bytes.TrimLeft(rest, " \t")
			if len(v) == 0 || v[0] != ':' {
				continue
			}
			if v = bytes.TrimLeft(v[1:], " \t"); len(v) >= 2 && v[0] == '"' && v[1] != '"' {
				return true
			}
		}
	}
	return false
}
