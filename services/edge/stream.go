package edge

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"time"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

// maxSSELine bounds one streamed event line from a provider.
const maxSSELine = 1 << 20

var errSSELineTooLong = errors.New("provider sent a streamed line over 1 MiB")

var dataPrefix = []byte("data:")

// relay is the state of one streamed answer.
type relay struct {
	c  *call
	rc *http.ResponseController
	d  dialect
	p  *parsed
	// used is the usage the provider reported so far; final once the
	// event with the answer's usage was seen.
	used  tokens
	final bool
	// delivered counts the events with text sent to the client (flushed);
	// unflushed those written since the last flush.
	delivered, unflushed int64
	// br is the provider's stream: events that arrived together are
	// flushed together.
	br *bufio.Reader
	// skip drops the rest of an event the client did not ask for.
	skip bool
}

// stream passes an SSE answer through event by event, flushing whenever
// it has relayed every event the provider has sent so far. The
// dialect reads usage from the events; when the answer ends early it is
// charged what was delivered (one token an event with text), capped by the
// reservation.
func (c *call) stream(resp *http.Response, d dialect, p *parsed) outcome {
	c.answerHeaders(http.StatusOK, resp.Header.Get("Content-Type"))
	h := c.w.Header()
	h["Cache-Control"] = []string{"no-cache"}
	h["X-Accel-Buffering"] = []string{"no"}
	c.w.WriteHeader(http.StatusOK)
	rl := &relay{c: c, rc: http.NewResponseController(c.w), d: d, p: p}
	// A client that stops reading must not hold the stream forever. A
	// deadline is wall-clock time, not the injected clock's.
	_ = rl.rc.SetWriteDeadline(time.Now().Add(c.s.cfg.RequestTimeout))
	clientErr, readErr := rl.run(bufio.NewReaderSize(resp.Body, 16<<10))
	out := outcome{status: usagev1.RequestStatus_REQUEST_STATUS_OK, used: rl.outcome(false)}
	switch {
	case clientErr != nil || c.r.Context().Err() != nil:
		out.status = usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED
		c.status, c.reason = 499, "client_cancelled"
	case readErr != io.EOF:
		c.s.log.Warn("edge: provider stream broke off", "request_id", c.id, "err", readErr)
		out.status = usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR
		c.reason = "upstream_error"
	}
	return out
}

// run relays lines until the provider's stream or the client ends.
func (rl *relay) run(br *bufio.Reader) (clientErr, readErr error) {
	rl.br = br
	var long []byte
	for clientErr == nil {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxSSELine {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			if len(long) > maxSSELine {
				// A provider that never ends its line would grow this
				// without bound: end the stream as an upstream failure.
				return nil, errSSELineTooLong
			}
			line = long
		}
		if len(line) > 0 {
			clientErr = rl.line(line)
		}
		if err != nil {
			if clientErr == nil {
				clientErr = rl.flush()
			}
			return clientErr, err
		}
	}
	return clientErr, nil
}

// outcome is what the stream used: the provider's usage if it reported
// it, else what it reported of the prompt (or the estimate) and one token
// per event with text delivered, capped by the reservation. A complete
// answer counts the events written and about to be flushed.
func (rl *relay) outcome(complete bool) tokens {
	if rl.final {
		return rl.used
	}
	u := rl.used
	if u.input == 0 {
		u.input = rl.c.est.input
	}
	out := rl.delivered
	if complete {
		out += rl.unflushed
	}
	u.output = min(out, rl.c.est.output)
	return u
}

// flush sends what was written; its text events count as delivered once
// sent.
func (rl *relay) flush() error {
	if err := rl.rc.Flush(); err != nil {
		return err
	}
	rl.delivered += rl.unflushed
	rl.unflushed = 0
	return nil
}

// line handles one line of an SSE answer; it returns the client's write
// error.
func (rl *relay) line(line []byte) error {
	c := rl.c
	content := bytes.TrimRight(line, "\r\n")
	if len(content) == 0 { // the end of an event
		if rl.skip {
			rl.skip = false
			return nil
		}
		if _, err := c.w.Write(line); err != nil {
			return err
		}
		if rl.br.Buffered() > 0 {
			return nil // the next events are here already: one flush for all
		}
		return rl.flush()
	}
	if rl.skip {
		return nil
	}
	data, ok := bytes.CutPrefix(content, dataPrefix)
	if !ok { // event names, comments: passed on
		_, err := c.w.Write(line)
		return err
	}
	info := rl.d.event(bytes.TrimLeft(data, " "), &rl.used)
	if info.usage {
		rl.final = true
	}
	if info.final {
		// The answer is complete: account for it before the client
		// reads its end.
		c.account(outcome{status: usagev1.RequestStatus_REQUEST_STATUS_OK, used: rl.outcome(true)})
	}
	if info.usageOnly && !rl.p.wantsUsage {
		rl.skip = true
		return nil
	}
	if _, err := c.w.Write(line); err != nil {
		return err
	}
	// An event is a token the client received once flushed, and only when
	// it carries text (OpenAI's role and finish chunks do not).
	if info.text {
		rl.unflushed++
	}
	return nil
}
