package limitclient

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
)

const (
	// maxBatch bounds the items of one stream message; a caller's items
	// are never split, so a message may exceed it by one caller's items.
	maxBatch = 256
	// maxInFlight is how many messages a stream has unanswered. While they
	// are out, callers queue up and go together in the next message: the
	// batching comes from load alone, so an idle client adds no delay.
	maxInFlight = 2
	// queueLen is how many callers may wait for a lane's sender.
	queueLen = 1024
)

// errBatch marks a message the limiter refused as a whole (the response's
// error field): its callers ask again one by one, so that one caller's bad
// item does not fail the others and each gets its own status code.
var errBatch = errors.New("limiter refused the batch")

// call is one caller's items waiting for their results.
type call struct {
	items []*limiterv1.CheckItem
	done  chan callResult // buffered: an answer never waits for its caller
}

type callResult struct {
	res []*limiterv1.CheckResult
	err error
}

// lane coalesces concurrent callers' items for one replica onto one
// long-lived CheckStream: a sender goroutine turns what is queued into one
// message; each stream's receiver hands the answers back by sequence.
type lane struct {
	addr   string
	client limiterv1.LimiterServiceClient
	queue  chan *call
	closed chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

func newLane(addr string, cl limiterv1.LimiterServiceClient) *lane {
	l := &lane{addr: addr, client: cl, queue: make(chan *call, queueLen), closed: make(chan struct{})}
	l.wg.Go(l.send)
	return l
}

// close stops the lane; its callers fail with a retryable error.
func (l *lane) close() {
	l.once.Do(func() { close(l.closed) })
	l.wg.Wait()
}

func (l *lane) unavailable() error {
	return status.Error(codes.Unavailable, "limiter "+l.addr+" left the membership")
}

// check decides items over the lane's stream. It returns ctx.Err() when
// ctx ends first (the items may still be decided: their reservations time
// out), and errBatch when the limiter refused the message they went in.
func (l *lane) check(ctx context.Context, items []*limiterv1.CheckItem) ([]*limiterv1.CheckResult, error) {
	c := &call{items: items, done: make(chan callResult, 1)}
	select {
	case l.queue <- c:
	case <-l.closed:
		return nil, l.unavailable()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-c.done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.closed:
		// The answer may have come just before the lane closed.
		select {
		case r := <-c.done:
			return r.res, r.err
		default:
			return nil, l.unavailable()
		}
	}
}

// send is the lane's sender goroutine. It opens a stream lazily and again
// after one fails.
func (l *lane) send() {
	var (
		st    *stream
		seq   uint64
		batch []*call
	)
	defer func() {
		if st != nil {
			st.cancel()
		}
	}()
	for {
		var first *call
		select {
		case <-l.closed:
			return
		case first = <-l.queue:
		}
		var err error
		if st, err = l.slot(st); err != nil {
			first.done <- callResult{err: err}
			if st == nil && errors.Is(err, errLaneClosed) {
				return
			}
			continue
		}
		// Take whatever else is already waiting.
		batch = append(batch[:0], first)
		n := len(first.items)
	drain:
		for n < maxBatch {
			select {
			case c := <-l.queue:
				batch = append(batch, c)
				n += len(c.items)
			default:
				break drain
			}
		}
		req := &limiterv1.CheckStreamRequest{Items: make([]*limiterv1.CheckItem, 0, n)}
		for _, c := range batch {
			req.Items = append(req.Items, c.items...)
		}
		seq++
		req.Sequence = seq
		st.register(seq, batch)
		batch = batch[:0]
		if err := st.cs.Send(req); err != nil {
			st.fail(err)
			st = nil
		}
	}
}

var errLaneClosed = errors.New("lane closed")

// slot returns a live stream with a free in-flight slot, opening one when
// st is nil or has failed.
func (l *lane) slot(st *stream) (*stream, error) {
	for {
		if st == nil {
			var err error
			if st, err = l.open(); err != nil {
				return nil, err
			}
		}
		// A failed stream may still have free slots: look first.
		select {
		case <-st.dead:
			st = nil
			continue
		default:
		}
		select {
		case st.slots <- struct{}{}:
			return st, nil
		case <-st.dead:
			st = nil
		case <-l.closed:
			st.cancel()
			return nil, errLaneClosed
		}
	}
}

func (l *lane) open() (*stream, error) {
	// The stream outlives every caller; the dial options' per-RPC
	// credentials authenticate it.
	ctx, cancel := context.WithCancel(context.Background())
	cs, err := l.client.CheckStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	st := &stream{
		addr: l.addr, cs: cs, cancel: cancel,
		slots: make(chan struct{}, maxInFlight), dead: make(chan struct{}),
		pending: make(map[uint64][]*call),
	}
	go st.recv()
	return st, nil
}

// stream is one CheckStream and the messages it has unanswered.
type stream struct {
	addr   string
	cs     grpc.BidiStreamingClient[limiterv1.CheckStreamRequest, limiterv1.CheckStreamResponse]
	cancel context.CancelFunc
	slots  chan struct{}
	dead   chan struct{} // closed when the stream has failed

	mu      sync.Mutex
	err     error
	pending map[uint64][]*call
}

// register records a message's callers before it is sent, so that its
// answer always finds them; on a failed stream it fails them at once.
func (s *stream) register(seq uint64, batch []*call) {
	b := make([]*call, len(batch))
	copy(b, batch)
	s.mu.Lock()
	if err := s.err; err != nil {
		s.mu.Unlock()
		fail(b, err)
		return
	}
	s.pending[seq] = b
	s.mu.Unlock()
}

func (s *stream) recv() {
	for {
		resp, err := s.cs.Recv()
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		batch, ok := s.pending[resp.GetSequence()]
		delete(s.pending, resp.GetSequence())
		s.mu.Unlock()
		if !ok {
			s.fail(status.Errorf(codes.Internal, "limiter %s answered unknown sequence %d", s.addr, resp.GetSequence()))
			return
		}
		<-s.slots
		s.dispatch(batch, resp)
	}
}

func (s *stream) dispatch(batch []*call, resp *limiterv1.CheckStreamResponse) {
	if msg := resp.GetError(); msg != "" {
		fail(batch, errBatch)
		return
	}
	res := resp.GetResults()
	n := 0
	for _, c := range batch {
		n += len(c.items)
	}
	if len(res) != n {
		fail(batch, status.Errorf(codes.Internal, "limiter %s answered %d results for %d items", s.addr, len(res), n))
		return
	}
	for _, c := range batch {
		k := len(c.items)
		c.done <- callResult{res: res[:k:k]}
		res = res[k:]
	}
}

// fail ends the stream and fails every caller in flight with a retryable
// error: they go to the next owner.
func (s *stream) fail(err error) {
	if errors.Is(err, io.EOF) {
		err = status.Error(codes.Unavailable, "limiter "+s.addr+" closed the stream")
	} else if _, ok := status.FromError(err); !ok {
		err = status.Error(codes.Unavailable, "limiter "+s.addr+": "+err.Error())
	}
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.cancel()
	close(s.dead)
	for _, b := range pending {
		fail(b, err)
	}
}

func fail(batch []*call, err error) {
	for _, c := range batch {
		c.done <- callResult{err: err}
	}
}
