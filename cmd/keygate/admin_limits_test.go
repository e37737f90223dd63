package main

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// TestLimitFlags: keys create and update change what their flags name and
// keep the rest of the key.
func TestLimitFlags(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	existing := func() *keystorev1.Key {
		return &keystorev1.Key{
			GlobalLimits: &typev1.Limits{Rpm: 1, Tpd: 100},
			ModelLimits:  []*typev1.ModelLimits{{Model: "small", Limits: &typev1.Limits{Rpm: 2}}},
		}
	}
	cases := []struct {
		name  string
		args  []string
		paths []string
		want  func(k *keystorev1.Key)
	}{
		{"nothing given", nil, nil, func(*keystorev1.Key) {}},
		{"a global rate, zero included", []string{"--rpm", "0", "--tpm", "7"}, []string{"global_limits"}, func(k *keystorev1.Key) {
			k.GlobalLimits = &typev1.Limits{Rpm: 0, Tpm: 7, Tpd: 100}
		}},
		{"a model's rate", []string{"--model", "small", "--tpd", "9"}, []string{"model_limits"}, func(k *keystorev1.Key) {
			k.ModelLimits[0].Limits = &typev1.Limits{Rpm: 2, Tpd: 9}
		}},
		{"a new model", []string{"--model", "large", "--rpd", "3"}, []string{"model_limits"}, func(k *keystorev1.Key) {
			k.ModelLimits = append(k.ModelLimits, &typev1.ModelLimits{Model: "large", Limits: &typev1.Limits{Rpd: 3}})
		}},
		{"everything else", []string{
			"--budget", "5.00", "--budget-period", "daily", "--token-cap", "1000", "--expire", "720h",
			"--allowed-models", "small,large", "--labels", "team=web,env=prod",
		}, []string{"budget", "token_cap", "expire_time", "allowed_models", "labels"}, func(k *keystorev1.Key) {
			k.Budget = &typev1.Budget{AmountUsd: "5.00", ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_DAILY}
			k.TokenCap = &typev1.TokenCap{Tokens: 1000, ResetPeriod: typev1.ResetPeriod_RESET_PERIOD_MONTHLY}
			k.ExpireTime = timestamppb.New(now.Add(720 * time.Hour))
			k.AllowedModels = []string{"small", "large"}
			k.Labels = map[string]string{"team": "web", "env": "prod"}
		}},
		{"an expiry as a time", []string{"--expire", "2027-01-01T00:00:00Z"}, []string{"expire_time"}, func(k *keystorev1.Key) {
			k.ExpireTime = timestamppb.New(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			k := existing()
			paths, err := parseLimitFlags(t, c.args).apply(k, now)
			require.NoError(t, err)
			require.Equal(t, c.paths, paths)
			want := existing()
			c.want(want)
			require.True(t, proto.Equal(want, k), "got %v\nwant %v", k, want)
		})
	}

	for name, args := range map[string][]string{
		"budget period": {"--budget", "1", "--budget-period", "hourly"},
		"cap period":    {"--token-cap", "1", "--token-cap-period", "yearly"},
		"expiry":        {"--expire", "soon"},
		"labels":        {"--labels", "team"},
	} {
		t.Run("bad "+name, func(t *testing.T) {
			t.Parallel()
			_, err := parseLimitFlags(t, args).apply(existing(), now)
			require.Error(t, err)
		})
	}
}

func parseLimitFlags(t *testing.T, args []string) *limitFlags {
	t.Helper()
	var lf limitFlags
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	lf.register(fs)
	require.NoError(t, fs.Parse(args))
	return &lf
}
