package keystore

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/money"
)

var (
	idPattern     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	modelPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)
	envVarPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
)

const (
	maxNameLen   = 100
	maxLabels    = 64
	maxLabelKey  = 63
	maxLabelVal  = 256
	maxMemberLen = 256
	maxModels    = 256
)

func validID(field, id string) error {
	if !idPattern.MatchString(id) {
		return invalid(field, "must be 1-63 lower-case letters, digits or dashes, starting and ending with a letter or digit")
	}
	return nil
}

func validName(field, name string) error {
	n := utf8.RuneCountInString(name)
	switch {
	case strings.TrimSpace(name) == "":
		return invalid(field, "must not be empty")
	case n > maxNameLen:
		return invalid(field, "must be at most %d characters, got %d", maxNameLen, n)
	case !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl) || strings.Contains(name, "/"):
		return invalid(field, "must be printable text without '/'")
	}
	return nil
}

func validMember(field, m string) error {
	switch {
	case m == "":
		return invalid(field, "must not be empty")
	case len(m) > maxMemberLen:
		return invalid(field, "must be at most %d bytes", maxMemberLen)
	case !utf8.ValidString(m) || strings.ContainsFunc(m, unicode.IsControl) || strings.ContainsFunc(m, unicode.IsSpace):
		return invalid(field, "must be printable text without spaces")
	case m == rootSubject:
		return invalid(field, "%q is reserved for the root token", rootSubject)
	}
	return nil
}

func validRole(field string, r keystorev1.Role) error {
	switch r {
	case keystorev1.Role_ROLE_OWNER, keystorev1.Role_ROLE_ADMIN, keystorev1.Role_ROLE_MEMBER:
		return nil
	}
	return invalid(field, "must be ROLE_OWNER, ROLE_ADMIN or ROLE_MEMBER")
}

func validLimits(field string, l *typev1.Limits) error {
	for _, f := range []struct {
		name string
		v    int64
	}{{"rpm", l.GetRpm()}, {"rpd", l.GetRpd()}, {"tpm", l.GetTpm()}, {"tpd", l.GetTpd()}} {
		if f.v < 0 {
			return invalid(field+"."+f.name, "must not be negative (0 means unlimited)")
		}
	}
	return nil
}

func validPeriod(field string, p typev1.ResetPeriod) error {
	switch p {
	case typev1.ResetPeriod_RESET_PERIOD_UNSPECIFIED, typev1.ResetPeriod_RESET_PERIOD_NEVER,
		typev1.ResetPeriod_RESET_PERIOD_DAILY, typev1.ResetPeriod_RESET_PERIOD_WEEKLY,
		typev1.ResetPeriod_RESET_PERIOD_MONTHLY:
		return nil
	}
	return invalid(field, "must be RESET_PERIOD_NEVER, RESET_PERIOD_DAILY, RESET_PERIOD_WEEKLY or RESET_PERIOD_MONTHLY")
}

func validExpiry(field string, t *timestamppb.Timestamp, now time.Time) error {
	if t == nil {
		return nil
	}
	if err := t.CheckValid(); err != nil {
		return invalid(field, "not a valid timestamp")
	}
	if !t.AsTime().After(now) {
		return invalid(field, "must be in the future (use ExpireKey to end a key now)")
	}
	return nil
}

func validLabels(field string, labels map[string]string) error {
	if len(labels) > maxLabels {
		return invalid(field, "at most %d labels", maxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelKey || !utf8.ValidString(k) || strings.ContainsFunc(k, unicode.IsControl) {
			return invalid(field, "label keys must be 1-%d printable characters", maxLabelKey)
		}
		if len(v) > maxLabelVal || !utf8.ValidString(v) {
			return invalid(field+"."+k, "label values must be valid UTF-8 of at most %d bytes", maxLabelVal)
		}
	}
	return nil
}

// keySettings are the settable fields of a key, shared by create and update.
type keySettings struct {
	expire        *timestamppb.Timestamp
	allowedModels []string
	labels        map[string]string
	global        *typev1.Limits
	modelLimits   []*typev1.ModelLimits
	tokenCap      *typev1.TokenCap
	budget        *typev1.Budget
}

// validateKeySettings checks every field present in mask (nil = all) and
// that every model named exists in the registry.
func (s *Server) validateKeySettings(ctx context.Context, ks keySettings, mask map[string]bool) error {
	has := func(f string) bool { return mask == nil || mask[f] }
	now := s.clock.Now()
	if has("expire_time") {
		if err := validExpiry("expire_time", ks.expire, now); err != nil {
			return err
		}
	}
	if has("labels") {
		if err := validLabels("labels", ks.labels); err != nil {
			return err
		}
	}
	if has("global_limits") {
		if err := validLimits("global_limits", ks.global); err != nil {
			return err
		}
	}
	if has("token_cap") && ks.tokenCap != nil {
		if ks.tokenCap.GetTokens() < 0 {
			return invalid("token_cap.tokens", "must not be negative (0 means unlimited)")
		}
		if err := validPeriod("token_cap.reset_period", ks.tokenCap.GetResetPeriod()); err != nil {
			return err
		}
	}
	if has("budget") && ks.budget != nil {
		if _, err := money.Parse(ks.budget.GetAmountUsd()); err != nil {
			return invalid("budget.amount_usd", "%v", err)
		}
		if err := validPeriod("budget.reset_period", ks.budget.GetResetPeriod()); err != nil {
			return err
		}
	}
	var named []struct{ field, model string }
	if has("allowed_models") {
		if len(ks.allowedModels) > maxModels {
			return invalid("allowed_models", "at most %d models", maxModels)
		}
		for i, m := range ks.allowedModels {
			named = append(named, struct{ field, model string }{fmt.Sprintf("allowed_models[%d]", i), m})
		}
	}
	if has("model_limits") {
		if len(ks.modelLimits) > maxModels {
			return invalid("model_limits", "at most %d models", maxModels)
		}
		seen := map[string]bool{}
		for i, ml := range ks.modelLimits {
			f := fmt.Sprintf("model_limits[%d]", i)
			if seen[ml.GetModel()] {
				return invalid(f+".model", "model %q is listed twice", ml.GetModel())
			}
			seen[ml.GetModel()] = true
			if err := validLimits(f+".limits", ml.GetLimits()); err != nil {
				return err
			}
			named = append(named, struct{ field, model string }{f + ".model", ml.GetModel()})
		}
	}
	if len(named) == 0 {
		return nil
	}
	models, err := s.modelIDs(ctx)
	if err != nil {
		return err
	}
	for _, n := range named {
		if !models[n.model] {
			return invalid(n.field, "unknown model %q (see ListModels)", n.model)
		}
	}
	return nil
}

func validProvider(p *keystorev1.Provider) error {
	if err := validID("provider.id", p.GetId()); err != nil {
		return err
	}
	if p.GetBaseUrl() != "mock" {
		u, err := url.Parse(p.GetBaseUrl())
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return invalid("provider.base_url", `must be an http(s) URL without credentials, or "mock"`)
		}
	}
	if _, ok := keystorev1.ProviderKind_name[int32(p.GetKind())]; !ok {
		return invalid("provider.kind", "must be PROVIDER_KIND_OPENAI or PROVIDER_KIND_ANTHROPIC")
	}
	if p.GetApiKeyEnv() != "" && p.GetApiKeyFile() != "" {
		return invalid("provider.api_key_env", "set api_key_env or api_key_file, not both")
	}
	if p.GetApiKeyEnv() != "" && !envVarPattern.MatchString(p.GetApiKeyEnv()) {
		return invalid("provider.api_key_env", "must be the name of an environment variable, not a key")
	}
	if f := p.GetApiKeyFile(); f != "" && (!strings.HasPrefix(f, "/") || strings.ContainsFunc(f, unicode.IsControl)) {
		return invalid("provider.api_key_file", "must be an absolute file path")
	}
	return nil
}

func validModel(m *keystorev1.Model) error {
	if !modelPattern.MatchString(m.GetId()) {
		return invalid("model.id", "must be 1-128 letters, digits or ._:/- characters")
	}
	if err := validID("model.provider", m.GetProvider()); err != nil {
		return err
	}
	if u := m.GetUpstreamModel(); u != "" && (len(u) > 256 || strings.ContainsFunc(u, unicode.IsControl)) {
		return invalid("model.upstream_model", "must be at most 256 printable characters")
	}
	if _, err := money.Parse(m.GetInputPricePerMillionUsd()); err != nil {
		return invalid("model.input_price_per_million_usd", "a price is required: %v", err)
	}
	if _, err := money.Parse(m.GetOutputPricePerMillionUsd()); err != nil {
		return invalid("model.output_price_per_million_usd", "a price is required: %v", err)
	}
	if v := m.GetCacheWritePricePerMillionUsd(); v != "" {
		if _, err := money.Parse(v); err != nil {
			return invalid("model.cache_write_price_per_million_usd", "%v (or leave it empty for the input price)", err)
		}
	}
	if v := m.GetCacheReadPricePerMillionUsd(); v != "" {
		if _, err := money.Parse(v); err != nil {
			return invalid("model.cache_read_price_per_million_usd", "%v (or leave it empty for the input price)", err)
		}
	}
	return nil
}
