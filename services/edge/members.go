package edge

import (
	"bytes"
	"encoding/json"
)

// members calls fn with each top-level member of the JSON object in body,
// in order: its key (unescaped) and its value's raw bytes. It stops when
// fn returns false and reports whether body was an object it could walk.
// It checks structure only as far as walking needs: a body that must be
// valid JSON is checked by the caller (json.Unmarshal or json.Valid).
// One pass with no decoding of values, where json.Unmarshal would
// validate, then decode, every byte.
func members(body []byte, fn func(key string, val []byte) bool) bool {
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return false
	}
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return true
	}
	for i < len(body) {
		if body[i] != '"' {
			return false
		}
		end := skipString(body, i)
		if end < 0 {
			return false
		}
		key, ok := unquoteKey(body[i:end])
		if !ok {
			return false
		}
		i = skipSpace(body, end)
		if i >= len(body) || body[i] != ':' {
			return false
		}
		start := skipSpace(body, i+1)
		end = skipValue(body, start)
		if end < 0 {
			return false
		}
		if !fn(key, body[start:end]) {
			return true
		}
		i = skipSpace(body, end)
		switch {
		case i >= len(body):
			return false
		case body[i] == '}':
			return true
		case body[i] != ',':
			return false
		}
		i = skipSpace(body, i+1)
	}
	return false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] (a
// quote), or -1 if it does not end.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index after the value starting at b[i], or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				end := skipString(b, i)
				if end < 0 {
					return -1
				}
				i = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	}
	start := i
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			if i == start {
				return -1
			}
			return i
		}
	}
	return -1 // a value at the end: no object closes after it
}

// unquoteKey is a quoted key's text; escapes are rare in keys, so only
// they pay for decoding.
func unquoteKey(q []byte) (string, bool) {
	inner := q[1 : len(q)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	return s, json.Unmarshal(q, &s) == nil
}

// bodyUsage is the usage object of a unary answer: its last top-level
// "usage" member (the one encoding/json would keep), decoded alone; nil
// when there is none or it is not a T.
func bodyUsage[T any](body []byte) *T {
	var raw []byte
	if !members(body, func(k string, v []byte) bool {
		if k == "usage" {
			raw = v
		}
		return true
	}) || raw == nil {
		return nil
	}
	var u *T
	if json.Unmarshal(raw, &u) != nil {
		return nil
	}
	return u
}
