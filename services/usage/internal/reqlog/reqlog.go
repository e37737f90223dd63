// Package reqlog stores the per-request log of the usage ledger: one entry
// per inference request, appended in bulk, read newest first by workspace,
// key, owner or model, and dropped by age and size.
//
// The log is not the ledger: billing, budgets and limits read the
// aggregates in etcd. It lives apart from etcd because it grows with
// requests, and etcd should see writes that grow with keys.
//
// Two stores implement it: Pebble (embedded, the default, on the usage
// replica's volume) and PostgreSQL (for deployments with several usage
// replicas or more log than one volume holds). Both are idempotent by
// (producer, sequence): an entry written twice is stored once.
package reqlog

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"time"
)

// Entry is one request as the log keeps it.
type Entry struct {
	Workspace, Key, Owner, Model string
	Status                       int32
	// At is the request's time; entries list newest first by it.
	At time.Time
	// Producer and Seq identify the entry: the ledger's idempotency key.
	Producer string
	Seq      uint64
	// Record is the marshalled usagev1.UsageRecord, opaque here.
	Record []byte
}

// Cursor is a position in the log's order (time, producer, sequence);
// listing from a cursor returns entries strictly older.
type Cursor struct {
	At       time.Time
	Producer string
	Seq      uint64
}

// Query selects entries of one workspace, newest first. Empty filters
// match everything; Status 0 matches every status.
type Query struct {
	Workspace, Key, Owner, Model string
	Status                       int32
	// Before, when set, continues a listing.
	Before *Cursor
	// Limit is the page size.
	Limit int
}

// MaxScan bounds how many entries one List call examines when filters are
// selective; it then returns a short page with a cursor to continue.
const MaxScan = 5000

// Page is one answer: entries and, when more may follow, where to go on.
type Page struct {
	Entries []Entry
	Next    *Cursor
}

func (q Query) matches(e *Entry) bool {
	return (q.Key == "" || e.Key == q.Key) &&
		(q.Owner == "" || e.Owner == q.Owner) &&
		(q.Model == "" || e.Model == q.Model) &&
		(q.Status == 0 || e.Status == q.Status)
}

// ErrBadCursor means a page token that no listing returned.
var ErrBadCursor = errors.New("page token is not one this listing returned")

// EncodeCursor renders a cursor as a page token bound to its workspace.
func EncodeCursor(ws string, c Cursor) string {
	var b []byte
	b = appendString(b, ws)
	b = binary.BigEndian.AppendUint64(b, uint64(c.At.UnixNano()))
	b = appendString(b, c.Producer)
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCursor reads a page token; it must belong to workspace ws.
func DecodeCursor(ws, tok string) (*Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return nil, ErrBadCursor
	}
	got, b, ok := readString(b)
	if !ok || got != ws || len(b) < 8 {
		return nil, ErrBadCursor
	}
	at := int64(binary.BigEndian.Uint64(b))
	prod, b, ok := readString(b[8:])
	if !ok || len(b) != 8 || at < 0 {
		return nil, ErrBadCursor
	}
	return &Cursor{At: time.Unix(0, at).UTC(), Producer: prod, Seq: binary.BigEndian.Uint64(b)}, nil
}

// appendString writes s with its length in front (uvarint), so that a
// prefix of one value is never mistaken for another value.
func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readString(b []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, false
	}
	return string(b[k : k+int(n)]), b[k+int(n):], true
}

// less orders cursors as the log does: by time, then producer, then seq.
func (c Cursor) less(o Cursor) bool {
	if !c.At.Equal(o.At) {
		return c.At.Before(o.At)
	}
	if c.Producer != o.Producer {
		return c.Producer < o.Producer
	}
	return c.Seq < o.Seq
}

func (e *Entry) cursor() Cursor { return Cursor{At: e.At, Producer: e.Producer, Seq: e.Seq} }

// encodeEntry packs every field but the identity, which the key holds.
func encodeEntry(e *Entry) []byte {
	b := make([]byte, 0, len(e.Record)+len(e.Key)+len(e.Owner)+len(e.Model)+16)
	b = appendString(b, e.Key)
	b = appendString(b, e.Owner)
	b = appendString(b, e.Model)
	b = binary.AppendVarint(b, int64(e.Status))
	return append(b, e.Record...)
}

var errCorrupt = errors.New("reqlog: corrupt entry")

func decodeEntry(b []byte, e *Entry) error {
	var ok bool
	if e.Key, b, ok = readString(b); !ok {
		return errCorrupt
	}
	if e.Owner, b, ok = readString(b); !ok {
		return errCorrupt
	}
	if e.Model, b, ok = readString(b); !ok {
		return errCorrupt
	}
	st, n := binary.Varint(b)
	if n <= 0 {
		return errCorrupt
	}
	e.Status = int32(st)
	e.Record = bytes.Clone(b[n:])
	return nil
}
