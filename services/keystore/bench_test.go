package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/internal/keycache"
)

func benchEnv(b *testing.B, maxKeys int32) *env {
	b.Helper()
	e := newEnv(b)
	e.workspace(b, "acme", maxKeys, nil)
	return e
}

// BenchmarkVerify compares a cache hit with VerifyKey over gRPC against
// embedded etcd, in the same run.
func BenchmarkVerify(b *testing.B) {
	e := benchEnv(b, 10)
	_, secret := e.createKey(b, e.root(b), &keystorev1.CreateKeyRequest{Workspace: "acme", Name: "k"})
	ctx := context.Background()
	b.Run("grpc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.verify(ctx, secret); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cache", func(b *testing.B) {
		v := startCache(b, e)
		cached(b, v, secret)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := v.Verify(ctx, secret); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkCreateKey(b *testing.B) {
	e := benchEnv(b, 1<<30)
	ctx := e.root(b)
	i := 0
	for b.Loop() {
		i++
		if _, err := e.client.CreateKey(ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fmt.Sprint("k", i)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkRevocation measures the time from DeleteKey returning to the
// cached verifier rejecting the key; run with -benchtime=200x for 200 trials.
func BenchmarkRevocation(b *testing.B) {
	e := benchEnv(b, 1<<30)
	ctx := e.root(b)
	v := startCache(b, e)
	var lat []time.Duration
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		k, secret := e.createKey(b, ctx, &keystorev1.CreateKeyRequest{Workspace: "acme", Name: fmt.Sprint("k", i)})
		cached(b, v, secret)
		b.StartTimer()
		if _, err := e.client.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: "acme", Key: k.GetId()}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for {
			if _, err := v.Verify(context.Background(), secret); errors.Is(err, keycache.ErrInvalidKey) {
				break
			}
			runtime.Gosched()
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
