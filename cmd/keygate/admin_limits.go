package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// limitFlags are the limit settings shared by keys create and keys update.
// Only the flags given change a key.
type limitFlags struct {
	fs                      *pflag.FlagSet
	rpm, rpd, tpm, tpd, cap int64
	model, budget, period   string
	capPeriod, expire       string
	models, labels          string
}

func (l *limitFlags) register(fs *pflag.FlagSet) {
	l.registerLimits(fs)
	fs.StringVar(&l.expire, "expire", "", "expiry as RFC 3339 time or a duration from now (e.g. 720h)")
	fs.StringVar(&l.models, "allowed-models", "", "comma-separated models the key may use (empty: all)")
	fs.StringVar(&l.labels, "labels", "", "comma-separated k=v labels")
}

// registerLimits registers the flags of the limits every level takes.
func (l *limitFlags) registerLimits(fs *pflag.FlagSet) {
	l.fs = fs
	fs.Int64Var(&l.rpm, "rpm", 0, "requests per minute (0 = unlimited)")
	fs.Int64Var(&l.rpd, "rpd", 0, "requests per UTC day")
	fs.Int64Var(&l.tpm, "tpm", 0, "tokens per minute")
	fs.Int64Var(&l.tpd, "tpd", 0, "tokens per UTC day")
	fs.StringVar(&l.model, "model", "", "apply --rpm/--rpd/--tpm/--tpd to this model only")
	fs.StringVar(&l.budget, "budget", "", "cost budget in USD, e.g. 5.00")
	fs.StringVar(&l.period, "budget-period", "monthly", "budget reset: never, daily, weekly, monthly")
	fs.Int64Var(&l.cap, "token-cap", 0, "token cap per --token-cap-period (0 = unlimited)")
	fs.StringVar(&l.capPeriod, "token-cap-period", "monthly", "token cap reset: never, daily, weekly, monthly")
}

func resetPeriod(s string) (typev1.ResetPeriod, error) {
	v, ok := typev1.ResetPeriod_value["RESET_PERIOD_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, fmt.Errorf("reset period %q: want never, daily, weekly or monthly", s)
	}
	return typev1.ResetPeriod(v), nil
}

// apply sets on k what the flags name, and returns the field mask paths.
func (l *limitFlags) apply(k *keystorev1.Key, now time.Time) ([]string, error) {
	steps := []func(*keystorev1.Key) (string, error){
		l.applyRates, l.applyBudget, l.applyTokenCap,
		func(k *keystorev1.Key) (string, error) { return l.applyExpire(k, now) },
		l.applyAllowedModels, l.applyLabels,
	}
	var paths []string
	for _, step := range steps {
		path, err := step(k)
		if err != nil {
			return nil, err
		}
		if path != "" {
			paths = append(paths, path)
		}
	}
	return paths, nil
}

// applyRates sets the rates given, on the key's global limits or, with
// --model, on that model's, keeping the rates not given.
func (l *limitFlags) applyRates(k *keystorev1.Key) (string, error) {
	lim := l.rateLimits(k)
	set := false
	for _, f := range []struct {
		name string
		v    int64
		dst  *int64
	}{{"rpm", l.rpm, &lim.Rpm}, {"rpd", l.rpd, &lim.Rpd}, {"tpm", l.tpm, &lim.Tpm}, {"tpd", l.tpd, &lim.Tpd}} {
		if l.fs.Changed(f.name) {
			*f.dst, set = f.v, true
		}
	}
	switch {
	case !set:
		return "", nil
	case l.model == "":
		k.GlobalLimits = lim
		return "global_limits", nil
	}
	for _, ml := range k.ModelLimits {
		if ml.GetModel() == l.model {
			ml.Limits = lim
			return "model_limits", nil
		}
	}
	k.ModelLimits = append(k.ModelLimits, &typev1.ModelLimits{Model: l.model, Limits: lim})
	return "model_limits", nil
}

// rateLimits is the limits the rate flags change: the key's global ones,
// or with --model that model's; new ones when the key has none yet.
func (l *limitFlags) rateLimits(k *keystorev1.Key) *typev1.Limits {
	if l.model == "" && k.GlobalLimits != nil {
		return k.GlobalLimits
	}
	for _, ml := range k.ModelLimits {
		if l.model != "" && ml.GetModel() == l.model && ml.Limits != nil {
			return ml.Limits
		}
	}
	return &typev1.Limits{}
}

func (l *limitFlags) applyBudget(k *keystorev1.Key) (string, error) {
	if l.budget == "" {
		return "", nil
	}
	p, err := resetPeriod(l.period)
	if err != nil {
		return "", err
	}
	k.Budget = &typev1.Budget{AmountUsd: l.budget, ResetPeriod: p}
	return "budget", nil
}

func (l *limitFlags) applyTokenCap(k *keystorev1.Key) (string, error) {
	if !l.fs.Changed("token-cap") {
		return "", nil
	}
	p, err := resetPeriod(l.capPeriod)
	if err != nil {
		return "", err
	}
	k.TokenCap = &typev1.TokenCap{Tokens: l.cap, ResetPeriod: p}
	return "token_cap", nil
}

func (l *limitFlags) applyExpire(k *keystorev1.Key, now time.Time) (string, error) {
	if l.expire == "" {
		return "", nil
	}
	t, err := parseWhen("--expire", l.expire, now)
	if err != nil {
		return "", err
	}
	k.ExpireTime = timestamppb.New(t)
	return "expire_time", nil
}

// parseWhen reads a flag's time: RFC 3339, or a duration from now.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: want an RFC 3339 time or a duration, got %q", flag, s)
	}
	return now.Add(d), nil
}

func (l *limitFlags) applyAllowedModels(k *keystorev1.Key) (string, error) {
	if l.models == "" {
		return "", nil
	}
	k.AllowedModels = strings.Split(l.models, ",")
	return "allowed_models", nil
}

func (l *limitFlags) applyLabels(k *keystorev1.Key) (string, error) {
	if l.labels == "" {
		return "", nil
	}
	k.Labels = map[string]string{}
	for kv := range strings.SplitSeq(l.labels, ",") {
		name, val, ok := strings.Cut(kv, "=")
		if !ok {
			return "", fmt.Errorf("--labels: want k=v pairs, got %q", kv)
		}
		k.Labels[name] = val
	}
	return "labels", nil
}
