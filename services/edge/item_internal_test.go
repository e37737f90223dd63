package edge

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/keycache"
	"github.com/keygate/keygate/internal/limitpolicy"
)

// perRequest are the fields newItem sets itself; it copies every other.
var perRequest = map[protoreflect.Name]bool{"reservation_id": true, "estimated_tokens": true, "estimated_cost_micros": true}

// TestNewItemCopiesEveryField fails when CheckItem gains a field newItem
// does not copy from the template.
func TestNewItemCopiesEveryField(t *testing.T) {
	t.Parallel()
	tpl := &limiterv1.CheckItem{}
	fields := tpl.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if perRequest[fd.Name()] {
			continue
		}
		m := tpl.ProtoReflect()
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			l.Append(l.NewElement())
			if fd.Kind() == protoreflect.Int32Kind {
				l.Set(0, protoreflect.ValueOfInt32(7))
			}
		case fd.Kind() == protoreflect.MessageKind:
			m.Mutable(fd)
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString("x"))
		default:
			t.Fatalf("field %s: set it in this test", fd.Name())
		}
	}
	got := newItem(tpl, "req", 5, 6)
	want := proto.Clone(tpl).(*limiterv1.CheckItem)
	want.ReservationId, want.EstimatedTokens, want.EstimatedCostMicros = "req", 5, 6
	require.True(t, proto.Equal(want, got), "got %v", got)
}

// sinkItem keeps the benchmarks' items on the heap, as a real request's are.
var sinkItem *limiterv1.CheckItem

// BenchmarkCheckItem: what building a request's Check item costs, as the
// edge did before levels (the key's policy narrowed per request) and now
// (the cached template of the key's levels, copied).
func BenchmarkCheckItem(b *testing.B) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	key := &keystorev1.Key{Id: "k", Workspace: "acme", Owner: "bob",
		GlobalLimits: &typev1.Limits{Rpm: 60, Tpd: 100000},
		ModelLimits:  []*typev1.ModelLimits{{Model: "m", Limits: &typev1.Limits{Rpm: 2}}}}
	b.Run("key-only-before", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			pol := &typev1.Policy{GlobalLimits: key.GetGlobalLimits(), TokenCap: key.GetTokenCap(), Budget: key.GetBudget()}
			for _, ml := range key.GetModelLimits() {
				if ml.GetModel() == "m" {
					pol.ModelLimits = []*typev1.ModelLimits{ml}
					break
				}
			}
			sinkItem = &limiterv1.CheckItem{ReservationId: "req", Key: key.GetId(), Model: "m", Policy: pol, EstimatedTokens: 5, EstimatedCostMicros: 6}
		}
	})
	levels := limitpolicy.Levels{Key: key,
		Workspace: &keystorev1.Workspace{Id: "acme", CreditsGrantedUsd: "10", Limits: &typev1.Policy{GlobalLimits: &typev1.Limits{Rpm: 600}},
			LimitOverride: &typev1.Override{ExpireTime: nil}},
		Member: &keystorev1.Member{Workspace: "acme", Member: "bob", Limits: &typev1.Policy{GlobalLimits: &typev1.Limits{Tpd: 5000}}}}
	b.Run("levels-uncached", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tpl, _ := limitpolicy.Item(levels, "m", now)
			sinkItem = newItem(tpl, "req", 5, 6)
		}
	})
	b.Run("levels-template", func(b *testing.B) {
		v := &keycache.Verified{Levels: levels}
		b.ReportAllocs()
		for b.Loop() {
			tpl, _ := v.Item("m", now)
			sinkItem = newItem(tpl, "req", 5, 6)
		}
	})
}
