package mock

import (
	"errors"
	"io"
	"net/http"
	"sync"
)

// Transport serves requests with h in-process: no listener, no network. The
// answer streams through a pipe, so each Write reaches the caller as it
// happens (a streamed answer is not buffered), and closing the response body
// or cancelling the request ends the handler's writes.
func Transport(h http.Handler) http.RoundTripper { return transport{h: h} }

type transport struct{ h http.Handler }

var errBodyClosed = errors.New("mock: response body closed")

// RoundTrip runs the handler in its own goroutine and answers once it has
// written its header (or returned).
func (t transport) RoundTrip(req *http.Request) (*http.Response, error) {
	pr, pw := io.Pipe()
	rw := &pipeWriter{header: http.Header{}, pw: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			rw.start(http.StatusOK)
			_ = pw.Close()
			if req.Body != nil {
				_ = req.Body.Close()
			}
		}()
		t.h.ServeHTTP(rw, req)
	}()
	select {
	case <-rw.ready:
	case <-req.Context().Done():
		_ = pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
	return &http.Response{
		Status:        http.StatusText(rw.status),
		StatusCode:    rw.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        rw.sent,
		Body:          &pipeBody{pr: pr},
		ContentLength: -1,
		Request:       req,
	}, nil
}

// pipeWriter is the handler's http.ResponseWriter.
type pipeWriter struct {
	header http.Header
	pw     *io.PipeWriter
	once   sync.Once
	ready  chan struct{}
	status int
	sent   http.Header
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) start(status int) {
	w.once.Do(func() {
		w.status = status
		w.sent = w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeWriter) WriteHeader(status int) { w.start(status) }

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.start(http.StatusOK)
	return w.pw.Write(p)
}

// Flush is a no-op beyond sending the header: the pipe hands over each
// write as it happens.
func (w *pipeWriter) Flush() { w.start(http.StatusOK) }

type pipeBody struct{ pr *io.PipeReader }

func (b *pipeBody) Read(p []byte) (int, error) { return b.pr.Read(p) }

func (b *pipeBody) Close() error { return b.pr.CloseWithError(errBodyClosed) }
