package edge

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/money"
	"github.com/keygate/keygate/services/edge/mock"
)

// route is one model the edge can serve.
type route struct {
	id            string
	upstreamModel string
	provider      string
	created       int64
	prices        money.Prices
	// priced is the usage record's copy of prices and their version,
	// rendered once per catalog load.
	priced pricedAt
	up     *upstream
}

// pricedAt is what a usage record says about the prices it was charged.
type pricedAt struct {
	input, output, cacheWrite, cacheRead string
	asOf                                 *timestamppb.Timestamp
}

// upstream is one provider: where to send requests and with which
// credential.
type upstream struct {
	// kinds are the dialect families it speaks (the mock speaks all).
	kinds  providerKind
	base   string // without a trailing slash
	client *http.Client
	apiKey string
	// credErr says why the credential could not be read; requests to this
	// provider then fail with 502 instead of reaching it unauthenticated.
	credErr error
}

// catalog is one immutable snapshot of the registry.
type catalog struct {
	byID map[string]*route
	list []*route // by id, for /v1/models
}

// catalogHolder refreshes the catalog from the registry. Readers take the
// current snapshot without locking.
type catalogHolder struct {
	reg    Registry
	getenv func(string) string
	log    *slog.Logger
	cur    atomic.Pointer[catalog]
	// One pooled client for every HTTP provider (pools are per host) and
	// one for the in-process mock: both outlive refreshes.
	http *http.Client
	mock *http.Client
	// lastErr avoids logging the same refresh failure every period.
	lastErr string
}

func newCatalogHolder(reg Registry, getenv func(string) string, mo mock.Options, log *slog.Logger) *catalogHolder {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: 0, // the per-request deadline bounds it
	}
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &catalogHolder{
		reg:    reg,
		getenv: getenv,
		log:    log,
		http:   &http.Client{Transport: tr, CheckRedirect: noRedirect},
		mock:   &http.Client{Transport: mock.Transport(mock.New(mo)), CheckRedirect: noRedirect},
	}
}

// get is the current catalog, nil until the first load succeeded.
func (h *catalogHolder) get() *catalog { return h.cur.Load() }

func (h *catalogHolder) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		h.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// refresh rebuilds the catalog; on failure the previous one stays.
func (h *catalogHolder) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := h.load(ctx)
	if err != nil {
		if ctx.Err() == nil && err.Error() != h.lastErr {
			h.log.Warn("edge: model registry refresh failed; serving the previous models", "err", err)
		}
		h.lastErr = err.Error()
		return
	}
	if h.lastErr != "" {
		h.log.Info("edge: model registry refresh recovered")
		h.lastErr = ""
	}
	h.cur.Store(c)
}

func (h *catalogHolder) load(ctx context.Context) (*catalog, error) {
	pr, err := h.reg.ListProviders(ctx, &keystorev1.ListProvidersRequest{})
	if err != nil {
		return nil, errors.Join(errors.New("list providers"), err)
	}
	mr, err := h.reg.ListModels(ctx, &keystorev1.ListModelsRequest{})
	if err != nil {
		return nil, errors.Join(errors.New("list models"), err)
	}
	ups := make(map[string]*upstream, len(pr.GetProviders()))
	for _, p := range pr.GetProviders() {
		ups[p.GetId()] = h.upstream(p)
	}
	c := &catalog{byID: make(map[string]*route, len(mr.GetModels()))}
	for _, m := range mr.GetModels() {
		up, ok := ups[m.GetProvider()]
		if !ok {
			h.log.Warn("edge: model names an unknown provider; not served", "model", m.GetId(), "provider", m.GetProvider())
			continue
		}
		prices, err := money.ParsePrices(m.GetInputPricePerMillionUsd(), m.GetOutputPricePerMillionUsd(),
			m.GetCacheWritePricePerMillionUsd(), m.GetCacheReadPricePerMillionUsd())
		if err != nil {
			// Never served for free: a model without valid prices is skipped.
			h.log.Warn("edge: model has no valid prices; not served", "model", m.GetId(), "err", err)
			continue
		}
		r := &route{
			id:            m.GetId(),
			upstreamModel: cmp.Or(m.GetUpstreamModel(), m.GetId()),
			provider:      m.GetProvider(),
			created:       m.GetCreateTime().GetSeconds(),
			prices:        prices,
			priced: pricedAt{
				input: prices.Input.String(), output: prices.Output.String(),
				cacheWrite: prices.CacheWrite.String(), cacheRead: prices.CacheRead.String(),
				asOf: cmp.Or(m.GetUpdateTime(), m.GetCreateTime()),
			},
			up: up,
		}
		c.byID[r.id] = r
		c.list = append(c.list, r)
	}
	slices.SortFunc(c.list, func(a, b *route) int { return strings.Compare(a.id, b.id) })
	return c, nil
}

func (h *catalogHolder) upstream(p *keystorev1.Provider) *upstream {
	if p.GetBaseUrl() == "mock" {
		return &upstream{kinds: kindOpenAI | kindAnthropic, base: "http://mock/v1", client: h.mock}
	}
	up := &upstream{kinds: kindOpenAI, base: strings.TrimRight(p.GetBaseUrl(), "/"), client: h.http}
	if p.GetKind() == keystorev1.ProviderKind_PROVIDER_KIND_ANTHROPIC {
		up.kinds = kindAnthropic
	}
	switch {
	case p.GetApiKeyEnv() != "":
		up.apiKey = h.getenv(p.GetApiKeyEnv())
		if up.apiKey == "" {
			up.credErr = errors.New("environment variable " + p.GetApiKeyEnv() + " is empty")
		}
	case p.GetApiKeyFile() != "":
		b, err := os.ReadFile(p.GetApiKeyFile())
		up.apiKey = strings.TrimSpace(string(b))
		if err != nil || up.apiKey == "" {
			up.credErr = errors.New("secret file " + p.GetApiKeyFile() + " is missing or empty")
		}
	}
	return up
}
