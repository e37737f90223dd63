package main

import (
	"context"
	"fmt"
	"sync"

	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	"github.com/keygate/keygate/internal/limitclient"
)

// limits is the process's one limiter client, shared by the edge (Check,
// Settle) and the keystore (ExplainKey). It is built on first use: the
// keystore role starts before the limiter role, whose in-process replica
// the client then calls directly.
type limits struct {
	a    *App
	once sync.Once
	lc   *limitclient.Client
	err  error
}

func (l *limits) client(ctx context.Context) (*limitclient.Client, error) {
	l.once.Do(func() {
		a := l.a
		cfg := limitclient.Config{Etcd: a.etcd, DialOptions: a.dialOptions(true), Logger: a.Logger.With("component", "limitclient")}
		if a.limiter != nil {
			// The limiter in this process decides its keys without a
			// loopback gRPC round trip.
			cfg.Local = &limitclient.Local{Addr: a.limiterAddr, Server: a.limiter, Token: a.Config.RootToken, Tracer: a.tel.Tracer}
			cfg.Watcher = a.limiter.Membership() // one membership watcher per process
		}
		// Its life is the app's, not the first caller's.
		l.lc, l.err = limitclient.New(context.WithoutCancel(ctx), cfg)
		if l.err != nil {
			l.err = fmt.Errorf("limiter client: %w", l.err)
			return
		}
		a.closers = append(a.closers, l.lc.Close)
	})
	return l.lc, l.err
}

// Explain implements keystore.LimitExplainer.
func (l *limits) Explain(ctx context.Context, it *limiterv1.CheckItem) (*limiterv1.ExplainResponse, error) {
	lc, err := l.client(ctx)
	if err != nil {
		return nil, err
	}
	return lc.Explain(ctx, it)
}
