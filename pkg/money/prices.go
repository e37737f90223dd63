package money

import "fmt"

// Prices are a model's prices in dollars per million tokens: uncached
// input, output, and prompt tokens written to and read from a provider's
// prompt cache. Every charge of a request is computed here, for the edge's
// reservations and the ledger's records alike.
type Prices struct {
	Input, Output, CacheWrite, CacheRead Nanos
}

// ParsePrices reads a model's prices; an empty cache price is the input
// price (a cache token is never free by omission).
func ParsePrices(input, output, cacheWrite, cacheRead string) (Prices, error) {
	var p Prices
	var err error
	if p.Input, err = Parse(input); err != nil {
		return p, fmt.Errorf("input price: %w", err)
	}
	if p.Output, err = Parse(output); err != nil {
		return p, fmt.Errorf("output price: %w", err)
	}
	p.CacheWrite, p.CacheRead = p.Input, p.Input
	if cacheWrite != "" {
		if p.CacheWrite, err = Parse(cacheWrite); err != nil {
			return p, fmt.Errorf("cache write price: %w", err)
		}
	}
	if cacheRead != "" {
		if p.CacheRead, err = Parse(cacheRead); err != nil {
			return p, fmt.Errorf("cache read price: %w", err)
		}
	}
	return p, nil
}

// Cost is the charge for uncached input, output, cache-write and
// cache-read tokens, each rounded up to the nano-dollar.
func (p Prices) Cost(input, output, cacheWrite, cacheRead int64) Nanos {
	return Cost(input, p.Input) + Cost(output, p.Output) + Cost(cacheWrite, p.CacheWrite) + Cost(cacheRead, p.CacheRead)
}
