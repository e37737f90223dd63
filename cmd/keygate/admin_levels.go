package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	limiterv1 "github.com/keygate/keygate/gen/keygate/limiter/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/internal/limitkey"
	"github.com/keygate/keygate/internal/limitpolicy"
	"github.com/keygate/keygate/pkg/client"
	"github.com/keygate/keygate/pkg/money"
)

const levelHelp = `<level> is "workspace" (all the workspace's keys together), "member/<id>"
(all the keys a member owns) or "key/<id>".`

func (a *admin) limitsCmd() *cobra.Command {
	return a.noun(&cobra.Command{Use: "limits", Short: "Set, show and override the limits of a workspace, a member or a key"},
		a.limitsSet(), a.limitsShow(), a.limitsClearOverride())
}

// levelLimits is one level's limits as stored: enforced, report mode and
// the timed override.
type levelLimits struct {
	enforced, report *typev1.Policy
	override         *typev1.Override
}

func (a *admin) limitsSet() *cobra.Command {
	var lf limitFlags
	var report bool
	var until string
	cmd := &cobra.Command{Use: "set <level>", Short: "Change a level's limits; only the flags given change", Args: exactArgs(1),
		Long: "Change a level's limits; only the flags given change.\n\n" + levelHelp + `

With --report the limits are set in report mode: counted and reported when
they would deny (explain, metrics, request log, audit), never denying. With
--until they are a timed override, in force until then and reverting by
themselves.`,
		Example: "  keygate limits set workspace --workspace acme --tpd 1000000 --budget 500 --budget-period monthly\n" +
			"  keygate limits set member/ada --workspace acme --rpm 120 --report\n" +
			"  keygate limits set key/<key-id> --workspace acme --rpm 600 --until 24h"}
	lf.registerLimits(cmd.Flags())
	cmd.Flags().BoolVar(&report, "report", false, "set the report-mode (shadow) limits instead of the enforced ones")
	cmd.Flags().StringVar(&until, "until", "", "timed override until this RFC 3339 time or duration from now")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		lv, err := parseLevel(args[0])
		if err != nil {
			return err
		}
		if report && until != "" {
			return errors.New("--report and --until: an override changes the enforced limits; pick one")
		}
		cur, err := a.levelLimits(ctx, args[0])
		if err != nil {
			return err
		}
		base := cur.enforced
		switch {
		case report:
			base = cur.report
		case until != "":
			base = cur.override.GetPolicy()
		}
		p, err := applyLimitFlags(&lf, base)
		if err != nil {
			return err
		}
		switch {
		case report:
			err = a.c.SetReportLimits(ctx, lv, p)
		case until != "":
			var t time.Time
			if t, err = parseWhen("--until", until, time.Now()); err == nil {
				err = a.c.SetOverride(ctx, lv, p, t)
			}
		default:
			err = a.c.SetLimits(ctx, lv, p)
		}
		if err != nil {
			return err
		}
		return a.showLevel(ctx, args[0])
	})
}

// applyLimitFlags is p with the limit flags given applied; an error when
// none is.
func applyLimitFlags(lf *limitFlags, p *typev1.Policy) (*typev1.Policy, error) {
	k := &keystorev1.Key{}
	if p != nil {
		p = proto.Clone(p).(*typev1.Policy)
		k.GlobalLimits, k.ModelLimits, k.TokenCap, k.Budget = p.GetGlobalLimits(), p.GetModelLimits(), p.GetTokenCap(), p.GetBudget()
	}
	paths, err := lf.apply(k, time.Now())
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, errors.New("nothing to change; pass --rpm, --tpd, --budget, --token-cap, ...")
	}
	return limitpolicy.KeyPolicy(k), nil
}

func (a *admin) limitsShow() *cobra.Command {
	cmd := &cobra.Command{Use: "show <level>", Short: "Show a level's enforced, report-mode and overriding limits", Args: exactArgs(1),
		Long: "Show a level's enforced, report-mode and overriding limits.\n\n" + levelHelp}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		return a.showLevel(ctx, args[0])
	})
}

func (a *admin) limitsClearOverride() *cobra.Command {
	cmd := &cobra.Command{Use: "clear-override <level>", Short: "End a level's timed override now", Args: exactArgs(1),
		Long: "End a level's timed override now.\n\n" + levelHelp}
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		lv, err := parseLevel(args[0])
		if err != nil {
			return err
		}
		if err := a.c.SetOverride(ctx, lv, nil, time.Time{}); err != nil {
			return err
		}
		return a.showLevel(ctx, args[0])
	})
}

// parseLevel reads "workspace", "member/<id>" or "key/<id>".
func parseLevel(s string) (client.Level, error) {
	kind, id, _ := strings.Cut(s, "/")
	switch {
	case s == "workspace":
		return client.WorkspaceLevel(), nil
	case kind == "member" && id != "":
		return client.MemberLevel(id), nil
	case kind == "key" && id != "":
		return client.KeyLevel(id), nil
	}
	return client.Level{}, fmt.Errorf("level %q: want workspace, member/<id> or key/<id>", s)
}

// levelLimits reads what a level holds now.
func (a *admin) levelLimits(ctx context.Context, level string) (levelLimits, error) {
	kind, id, _ := strings.Cut(level, "/")
	switch kind {
	case "key":
		k, err := a.c.GetKey(ctx, id)
		return levelLimits{limitpolicy.KeyPolicy(k), k.GetReportLimits(), k.GetLimitOverride()}, err
	case "member":
		m, err := a.member(ctx, id)
		return levelLimits{m.GetLimits(), m.GetReportLimits(), m.GetLimitOverride()}, err
	}
	r, err := a.c.Keystore.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: a.workspace})
	w := r.GetWorkspace()
	return levelLimits{w.GetLimits(), w.GetReportLimits(), w.GetLimitOverride()}, err
}

func (a *admin) member(ctx context.Context, id string) (*keystorev1.Member, error) {
	r, err := a.c.Keystore.ListMembers(ctx, &keystorev1.ListMembersRequest{Workspace: a.workspace})
	if err != nil {
		return nil, err
	}
	for _, m := range r.GetMembers() {
		if m.GetMember() == id {
			return m, nil
		}
	}
	return nil, fmt.Errorf("member %q is not in workspace %q", id, a.workspace)
}

func (a *admin) showLevel(ctx context.Context, level string) error {
	l, err := a.levelLimits(ctx, level)
	if err != nil {
		return err
	}
	if a.output == "json" {
		return a.json(&typev1.Override{Policy: l.enforced, ExpireTime: l.override.GetExpireTime()})
	}
	rows := policyRows("enforced", l.enforced)
	rows = append(rows, policyRows("report", l.report)...)
	if o := l.override; o != nil {
		until := "until " + o.GetExpireTime().AsTime().UTC().Format(time.RFC3339)
		rows = append(rows, policyRows("override "+until, o.GetPolicy())...)
	}
	return a.table("MODE\tLIMIT\tVALUE", rows)
}

// policyRows lists a policy's limits, one row each.
func policyRows(mode string, p *typev1.Policy) [][]string {
	var rows [][]string
	add := func(name string, v int64) {
		if v > 0 {
			rows = append(rows, []string{mode, name, strconv.FormatInt(v, 10)})
		}
	}
	addLimits := func(suffix string, l *typev1.Limits) {
		add("rpm"+suffix, l.GetRpm())
		add("rpd"+suffix, l.GetRpd())
		add("tpm"+suffix, l.GetTpm())
		add("tpd"+suffix, l.GetTpd())
	}
	addLimits("", p.GetGlobalLimits())
	for _, ml := range p.GetModelLimits() {
		addLimits(":"+ml.GetModel(), ml.GetLimits())
	}
	if c := p.GetTokenCap(); c.GetTokens() > 0 {
		rows = append(rows, []string{mode, "token_cap/" + periodName(c.GetResetPeriod()), strconv.FormatInt(c.GetTokens(), 10)})
	}
	if b := p.GetBudget(); b.GetAmountUsd() != "" {
		rows = append(rows, []string{mode, "budget/" + periodName(b.GetResetPeriod()), b.GetAmountUsd() + " USD"})
	}
	return rows
}

func periodName(p typev1.ResetPeriod) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "RESET_PERIOD_"))
}

func (a *admin) keysExplain() *cobra.Command {
	var model string
	var tokens int64
	cmd := &cobra.Command{Use: "explain <key-id>", Short: "Show every limit on a key at every level, live, and whether a request would pass",
		Args:    exactArgs(1),
		Example: "  keygate keys explain <key-id> --workspace acme --model gpt-4o --tokens 2000"}
	cmd.Flags().StringVar(&model, "model", "", "judge a request of this model")
	cmd.Flags().Int64Var(&tokens, "tokens", 0, "estimated tokens of that request")
	return a.inWorkspace(cmd, func(ctx context.Context, args []string) error {
		r, err := a.c.Explain(ctx, args[0], model, tokens)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showExplain(r)
	})
}

func (a *admin) showExplain(r *keystorev1.ExplainKeyResponse) error {
	rows := make([][]string, 0, len(r.GetLimits()))
	for _, s := range r.GetLimits() {
		reset := "-"
		if s.GetResetTime() != nil {
			reset = s.GetResetTime().AsTime().UTC().Format(time.RFC3339)
		}
		rows = append(rows, []string{
			limitkey.LevelName(s.GetLevel()), limitName(s), strings.ToLower(strings.TrimPrefix(s.GetMode().String(), "LIMIT_MODE_")),
			s.GetWindow(), quantity(s, s.GetLimit()), quantity(s, s.GetUsed()), quantity(s, s.GetReserved()),
			quantity(s, s.GetRemaining()), reset,
		})
	}
	if err := a.table("LEVEL\tLIMIT\tMODE\tWINDOW\tLIMIT\tUSED\tRESERVED\tREMAINING\tRESETS", rows); err != nil {
		return err
	}
	verdict := "would be admitted now"
	if !r.GetWouldAdmit() {
		verdict = "would be denied by " + limitkey.LimitedBy(r.GetDeniedLevel(), r.GetDeniedBy(), r.GetDeniedModel())
	}
	_, err := fmt.Fprintf(a.out, "\nrequest (estimate %s USD): %s\n", r.GetEstimatedCostUsd(), verdict)
	return err
}

// quantity renders a limit's amount: USD for budgets and credits (held in
// micro-dollars), a count otherwise.
func quantity(s *limiterv1.LimitState, v int64) string {
	switch s.GetKind() {
	case limiterv1.LimitKind_LIMIT_KIND_BUDGET, limiterv1.LimitKind_LIMIT_KIND_CREDITS:
		return money.FromMicros(v).String()
	}
	return strconv.FormatInt(v, 10)
}

func limitName(s *limiterv1.LimitState) string {
	n := limitkey.KindName(s.GetKind())
	if s.GetModel() != "" {
		n += ":" + s.GetModel()
	}
	return n
}
