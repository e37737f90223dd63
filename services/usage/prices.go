package usage

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/clock"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/pkg/money"
)

// modelLister is the part of the keystore the price book needs.
type modelLister interface {
	ListModels(ctx context.Context, in *keystorev1.ListModelsRequest, opts ...grpc.CallOption) (*keystorev1.ListModelsResponse, error)
}

// price is a model's prices per million tokens.
type price struct{ money.Prices }

const (
	// priceTTL bounds how stale a price may be when a record is charged.
	priceTTL = 30 * time.Second
	// missRefresh bounds keystore calls caused by unknown models.
	missRefresh = time.Second
)

// priceBook caches the keystore's model prices.
type priceBook struct {
	ks    modelLister
	token string
	clk   clock.Clock

	mu      sync.Mutex
	prices  map[string]price
	fetched time.Time
}

// lookup returns the prices of models, refreshing the cache when stale or
// when a model is missing. A model without a valid price is an InvalidError:
// it is never charged as free.
func (p *priceBook) lookup(ctx context.Context, models map[string]price) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clk.Now()
	if now.Sub(p.fetched) >= priceTTL || (p.missing(models) && now.Sub(p.fetched) >= missRefresh) {
		if err := p.refresh(ctx, now); err != nil {
			return err
		}
	}
	for m := range models {
		pr, ok := p.prices[m]
		if !ok {
			return invalidf("model %q has no price in the keystore: add the model with input and output prices first", m)
		}
		models[m] = pr
	}
	return nil
}

func (p *priceBook) missing(models map[string]price) bool {
	for m := range models {
		if _, ok := p.prices[m]; !ok {
			return true
		}
	}
	return false
}

func (p *priceBook) refresh(ctx context.Context, now time.Time) error {
	resp, err := p.ks.ListModels(auth.WithBearer(ctx, p.token), &keystorev1.ListModelsRequest{})
	if err != nil {
		return fmt.Errorf("%w: keystore ListModels: %w", ErrUnavailable, err)
	}
	prices := make(map[string]price, len(resp.GetModels()))
	for _, m := range resp.GetModels() {
		pr, err := money.ParsePrices(m.GetInputPricePerMillionUsd(), m.GetOutputPricePerMillionUsd(),
			m.GetCacheWritePricePerMillionUsd(), m.GetCacheReadPricePerMillionUsd())
		if err != nil {
			continue // unpriced: records for it are refused
		}
		prices[m.GetId()] = price{pr}
	}
	p.prices, p.fetched = prices, now
	return nil
}
