package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/client"
)

// admin is one admin command invocation: common flags and the output.
type admin struct {
	fs        *flag.FlagSet
	addr      string
	token     string
	workspace string
	output    string
	out       io.Writer
	c         *client.Client
}

func newAdmin(name string, getenv func(string) string, out io.Writer) *admin {
	a := &admin{fs: flag.NewFlagSet(name, flag.ContinueOnError), out: out}
	e := &envFlags{fs: a.fs, getenv: getenv}
	tok := getenv("KEYGATE_TOKEN")
	if tok == "" {
		tok = getenv("KEYGATE_ROOT_TOKEN")
	}
	e.str(&a.addr, "addr", "127.0.0.1:9090", "gRPC address of a running keygate")
	a.fs.StringVar(&a.token, "token", tok, "credential: root token or admin key ($KEYGATE_TOKEN, else $KEYGATE_ROOT_TOKEN)")
	e.str(&a.workspace, "workspace", "", "workspace id")
	e.str(&a.output, "output", "table", "table or json")
	return a
}

// parse parses flags (which may follow positional arguments) and connects.
func (a *admin) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := a.fs.Parse(args); err != nil {
			return nil, err
		}
		args = a.fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if a.output != "table" && a.output != "json" {
		return nil, fmt.Errorf("--output: want table or json, got %q", a.output)
	}
	if a.token == "" {
		return nil, errors.New("no credential: set KEYGATE_TOKEN (an admin key) or KEYGATE_ROOT_TOKEN, or pass --token")
	}
	c, err := client.New(a.addr, a.token, client.WithWorkspace(a.workspace))
	if err != nil {
		return nil, err
	}
	a.c = c
	return pos, nil
}

func (a *admin) needWorkspace() error {
	if a.workspace == "" {
		return errors.New("--workspace (or KEYGATE_WORKSPACE) is required")
	}
	return nil
}

func (a *admin) json(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.out, string(b))
	return err
}

func (a *admin) table(header string, rows [][]string) error {
	w := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

func runAdmin(ctx context.Context, group string, args []string, getenv func(string) string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("unknown command %q (run keygate help)", strings.TrimSpace(group+" "))
	}
	verb := args[0]
	a := newAdmin(group+" "+verb, getenv, out)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch group {
	case "workspaces":
		return a.workspaces(ctx, verb, args[1:])
	case "keys":
		return a.keys(ctx, verb, args[1:])
	case "audit":
		return a.audit(ctx, verb, args[1:])
	case "usage":
		return a.usage(ctx, verb, args[1:])
	case "models":
		return a.models(ctx, verb, args[1:])
	case "providers":
		return a.providers(ctx, verb, args[1:])
	}
	return fmt.Errorf("unknown command %q (run keygate help)", group)
}

func (a *admin) workspaces(ctx context.Context, verb string, args []string) error {
	name := a.fs.String("name", "", "display name")
	maxKeys := a.fs.Int("max-keys", 0, "most keys the workspace may hold (0: default 10)")
	pos, err := a.parse(args)
	if err != nil {
		return err
	}
	defer a.c.Close()
	ks := a.c.Keystore
	switch verb {
	case "create":
		if len(pos) != 1 {
			return errors.New("usage: keygate workspaces create <id> [--name N] [--max-keys N]")
		}
		r, err := ks.CreateWorkspace(ctx, &keystorev1.CreateWorkspaceRequest{Workspace: &keystorev1.Workspace{Id: pos[0], Name: *name, MaxKeys: int32(*maxKeys)}})
		if err != nil {
			return err
		}
		return a.showWorkspaces(r.GetWorkspace())
	case "get":
		if len(pos) != 1 {
			return errors.New("usage: keygate workspaces get <id>")
		}
		r, err := ks.GetWorkspace(ctx, &keystorev1.GetWorkspaceRequest{Workspace: pos[0]})
		if err != nil {
			return err
		}
		return a.showWorkspaces(r.GetWorkspace())
	case "list":
		r, err := ks.ListWorkspaces(ctx, &keystorev1.ListWorkspacesRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		return a.showWorkspaces(r.GetWorkspaces()...)
	case "add-member":
		role := map[string]keystorev1.Role{"owner": keystorev1.Role_ROLE_OWNER, "admin": keystorev1.Role_ROLE_ADMIN, "member": keystorev1.Role_ROLE_MEMBER}
		if len(pos) != 3 || role[pos[2]] == 0 {
			return errors.New("usage: keygate workspaces add-member <workspace> <member> owner|admin|member")
		}
		r, err := ks.SetMember(ctx, &keystorev1.SetMemberRequest{Workspace: pos[0], Member: pos[1], Role: role[pos[2]]})
		if err != nil {
			return err
		}
		return a.json(r.GetMember())
	}
	return fmt.Errorf("unknown command: workspaces %s (create, get, list, add-member)", verb)
}

func (a *admin) showWorkspaces(ws ...*keystorev1.Workspace) error {
	if a.output == "json" && len(ws) == 1 {
		return a.json(ws[0])
	}
	rows := make([][]string, 0, len(ws))
	for _, w := range ws {
		rows = append(rows, []string{w.GetId(), w.GetName(), strconv.Itoa(int(w.GetKeyCount())), strconv.Itoa(int(w.GetMaxKeys()))})
	}
	return a.table("ID\tNAME\tKEYS\tMAX", rows)
}

// limitFlags are the limit settings shared by keys create and keys update.
type limitFlags struct {
	rpm, rpd, tpm, tpd, cap int64
	model, budget, period   string
	capPeriod, expire       string
	models, labels          string
}

func (l *limitFlags) register(fs *flag.FlagSet) {
	fs.Int64Var(&l.rpm, "rpm", -1, "requests per minute (0 = unlimited)")
	fs.Int64Var(&l.rpd, "rpd", -1, "requests per UTC day")
	fs.Int64Var(&l.tpm, "tpm", -1, "tokens per minute")
	fs.Int64Var(&l.tpd, "tpd", -1, "tokens per UTC day")
	fs.StringVar(&l.model, "model", "", "apply --rpm/--rpd/--tpm/--tpd to this model only")
	fs.StringVar(&l.budget, "budget", "", "cost budget in USD, e.g. 5.00")
	fs.StringVar(&l.period, "budget-period", "monthly", "budget reset: never, daily, weekly, monthly")
	fs.Int64Var(&l.cap, "token-cap", -1, "token cap per --token-cap-period")
	fs.StringVar(&l.capPeriod, "token-cap-period", "monthly", "token cap reset: never, daily, weekly, monthly")
	fs.StringVar(&l.expire, "expire", "", "expiry as RFC 3339 time or a duration from now (e.g. 720h)")
	fs.StringVar(&l.models, "allowed-models", "", "comma-separated models the key may use (empty: all)")
	fs.StringVar(&l.labels, "labels", "", "comma-separated k=v labels")
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
	var paths []string
	lim := &typev1.Limits{}
	if l.model == "" && k.GlobalLimits != nil {
		lim = k.GlobalLimits
	}
	for _, ml := range k.ModelLimits {
		if l.model != "" && ml.GetModel() == l.model && ml.Limits != nil {
			lim = ml.Limits
		}
	}
	set := false
	for _, f := range []struct {
		v   int64
		dst *int64
	}{{l.rpm, &lim.Rpm}, {l.rpd, &lim.Rpd}, {l.tpm, &lim.Tpm}, {l.tpd, &lim.Tpd}} {
		if f.v >= 0 {
			*f.dst, set = f.v, true
		}
	}
	if set {
		if l.model == "" {
			k.GlobalLimits = lim
			paths = append(paths, "global_limits")
		} else {
			found := false
			for _, ml := range k.ModelLimits {
				if ml.GetModel() == l.model {
					ml.Limits, found = lim, true
				}
			}
			if !found {
				k.ModelLimits = append(k.ModelLimits, &typev1.ModelLimits{Model: l.model, Limits: lim})
			}
			paths = append(paths, "model_limits")
		}
	}
	if l.budget != "" {
		p, err := resetPeriod(l.period)
		if err != nil {
			return nil, err
		}
		k.Budget = &typev1.Budget{AmountUsd: l.budget, ResetPeriod: p}
		paths = append(paths, "budget")
	}
	if l.cap >= 0 {
		p, err := resetPeriod(l.capPeriod)
		if err != nil {
			return nil, err
		}
		k.TokenCap = &typev1.TokenCap{Tokens: l.cap, ResetPeriod: p}
		paths = append(paths, "token_cap")
	}
	if l.expire != "" {
		t, err := time.Parse(time.RFC3339, l.expire)
		if err != nil {
			d, derr := time.ParseDuration(l.expire)
			if derr != nil {
				return nil, fmt.Errorf("--expire: want an RFC 3339 time or a duration, got %q", l.expire)
			}
			t = now.Add(d)
		}
		k.ExpireTime = timestamppb.New(t)
		paths = append(paths, "expire_time")
	}
	if l.models != "" {
		k.AllowedModels = strings.Split(l.models, ",")
		paths = append(paths, "allowed_models")
	}
	if l.labels != "" {
		k.Labels = map[string]string{}
		for _, kv := range strings.Split(l.labels, ",") {
			name, val, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("--labels: want k=v pairs, got %q", kv)
			}
			k.Labels[name] = val
		}
		paths = append(paths, "labels")
	}
	return paths, nil
}

func (a *admin) keys(ctx context.Context, verb string, args []string) error {
	var lf limitFlags
	if verb == "create" || verb == "update" {
		lf.register(a.fs)
	}
	admin := a.fs.Bool("admin", false, "create an admin (management) key")
	owner := a.fs.String("owner", "", "owner member (default: the caller)")
	rename := a.fs.String("name", "", "new name (update)")
	grace := a.fs.Duration("grace", 0, "rotate: how long the old secret keeps working")
	state := a.fs.String("state", "", "list: active, disabled or expired")
	pos, err := a.parse(args)
	if err != nil {
		return err
	}
	defer a.c.Close()
	if err := a.needWorkspace(); err != nil {
		return err
	}
	ks := a.c.Keystore
	one := func(usage string) (string, error) {
		if len(pos) != 1 {
			return "", errors.New("usage: keygate keys " + usage)
		}
		return pos[0], nil
	}
	switch verb {
	case "create":
		name, err := one("create <name> --workspace W [--rpm N --tpd N --model M --budget 5.00 --expire 720h --admin]")
		if err != nil {
			return err
		}
		k := &keystorev1.Key{}
		if _, err := lf.apply(k, time.Now()); err != nil {
			return err
		}
		kind := keystorev1.KeyKind_KEY_KIND_STANDARD
		if *admin {
			kind = keystorev1.KeyKind_KEY_KIND_ADMIN
		}
		r, err := ks.CreateKey(ctx, &keystorev1.CreateKeyRequest{
			Workspace: a.workspace, Name: name, Kind: kind, Owner: *owner, ExpireTime: k.ExpireTime,
			AllowedModels: k.AllowedModels, Labels: k.Labels, GlobalLimits: k.GlobalLimits,
			ModelLimits: k.ModelLimits, TokenCap: k.TokenCap, Budget: k.Budget,
		})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		if err := a.showKeys(r.GetKey()); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.out, "\nsecret (shown once, store it now): %s\n", r.GetSecret())
		return err
	case "list":
		req := &keystorev1.ListKeysRequest{Workspace: a.workspace, PageSize: 1000, Owner: *owner}
		if *state != "" {
			v, ok := keystorev1.KeyState_value["KEY_STATE_"+strings.ToUpper(*state)]
			if !ok {
				return fmt.Errorf("--state: want active, disabled or expired, got %q", *state)
			}
			req.State = keystorev1.KeyState(v)
		}
		var all []*keystorev1.Key
		for {
			r, err := ks.ListKeys(ctx, req)
			if err != nil {
				return err
			}
			all = append(all, r.GetKeys()...)
			if req.PageToken = r.GetNextPageToken(); req.PageToken == "" {
				break
			}
		}
		if a.output == "json" {
			return a.json(&keystorev1.ListKeysResponse{Keys: all})
		}
		return a.showKeys(all...)
	case "get":
		id, err := one("get <key-id> --workspace W")
		if err != nil {
			return err
		}
		k, err := a.c.GetKey(ctx, id)
		if err != nil {
			return err
		}
		return a.showKeys(k)
	case "update":
		id, err := one("update <key-id> --workspace W [--name N --rpm N --model M --budget 5.00 ...]")
		if err != nil {
			return err
		}
		k, err := a.c.GetKey(ctx, id)
		if err != nil {
			return err
		}
		paths, err := lf.apply(k, time.Now())
		if err != nil {
			return err
		}
		if *rename != "" {
			k.Name = *rename
			paths = append(paths, "name")
		}
		if len(paths) == 0 {
			return errors.New("update: nothing to change; pass --name, --rpm, --budget, ...")
		}
		r, err := ks.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{Workspace: a.workspace, Key: id, Patch: k, Etag: k.GetEtag(), UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		if err != nil {
			return err
		}
		return a.showKeys(r.GetKey())
	case "disable", "enable":
		id, err := one(verb + " <key-id> --workspace W")
		if err != nil {
			return err
		}
		if err := a.c.SetEnabled(ctx, id, verb == "enable"); err != nil {
			return err
		}
		k, err := a.c.GetKey(ctx, id)
		if err != nil {
			return err
		}
		return a.showKeys(k)
	case "expire":
		id, err := one("expire <key-id> --workspace W")
		if err != nil {
			return err
		}
		r, err := ks.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: a.workspace, Key: id})
		if err != nil {
			return err
		}
		return a.showKeys(r.GetKey())
	case "rotate":
		id, err := one("rotate <key-id> --workspace W [--grace 1h]")
		if err != nil {
			return err
		}
		var g *timestamppb.Timestamp
		if *grace > 0 {
			g = timestamppb.New(time.Now().Add(*grace))
		}
		k, secret, err := a.c.Rotate(ctx, id, g)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(&keystorev1.RotateKeyResponse{Key: k, Secret: secret})
		}
		if err := a.showKeys(k); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.out, "\nnew secret (shown once, store it now): %s\n", secret)
		return err
	case "delete":
		id, err := one("delete <key-id> --workspace W")
		if err != nil {
			return err
		}
		if err := a.c.Delete(ctx, id); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.out, "deleted %s\n", id)
		return err
	}
	return fmt.Errorf("unknown command: keys %s (create, list, get, update, disable, enable, expire, rotate, delete)", verb)
}

func (a *admin) showKeys(keys ...*keystorev1.Key) error {
	if a.output == "json" {
		if len(keys) == 1 {
			return a.json(keys[0])
		}
		return a.json(&keystorev1.ListKeysResponse{Keys: keys})
	}
	rows := make([][]string, 0, len(keys))
	for _, k := range keys {
		l := k.GetGlobalLimits()
		exp := "-"
		if k.GetExpireTime() != nil {
			exp = k.GetExpireTime().AsTime().UTC().Format(time.RFC3339)
		}
		rows = append(rows, []string{
			k.GetId(), k.GetName(), strings.TrimPrefix(k.GetKind().String(), "KEY_KIND_"),
			strings.TrimPrefix(k.GetState().String(), "KEY_STATE_"), k.GetPartialKey(), k.GetOwner(),
			fmt.Sprintf("%d/%d/%d/%d", l.GetRpm(), l.GetRpd(), l.GetTpm(), l.GetTpd()), exp,
		})
	}
	return a.table("ID\tNAME\tKIND\tSTATE\tKEY\tOWNER\tRPM/RPD/TPM/TPD\tEXPIRES", rows)
}

func (a *admin) audit(ctx context.Context, verb string, args []string) error {
	key := a.fs.String("key", "", "only events about this key")
	limit := a.fs.Int("limit", 50, "most events to show")
	if _, err := a.parse(args); err != nil {
		return err
	}
	defer a.c.Close()
	if verb != "list" {
		return fmt.Errorf("unknown command: audit %s (list)", verb)
	}
	if err := a.needWorkspace(); err != nil {
		return err
	}
	r, err := a.c.Keystore.ListAuditEvents(ctx, &keystorev1.ListAuditEventsRequest{Workspace: a.workspace, Key: *key, PageSize: int32(*limit)})
	if err != nil {
		return err
	}
	if a.output == "json" {
		return a.json(r)
	}
	rows := make([][]string, 0, len(r.GetEvents()))
	for _, e := range r.GetEvents() {
		rows = append(rows, []string{e.GetTime().AsTime().UTC().Format(time.RFC3339), e.GetAction(), e.GetKey(), e.GetActor(), e.GetCredential()})
	}
	return a.table("TIME\tACTION\tKEY\tACTOR\tCREDENTIAL", rows)
}

func (a *admin) usage(ctx context.Context, verb string, args []string) error {
	model := a.fs.String("model", "", "only this model")
	groupBy := a.fs.String("group-by", "key", "list: key, model or owner")
	from := a.fs.String("from", "", "series/list: first UTC day, YYYY-MM-DD (default 30 days ago)")
	to := a.fs.String("to", "", "series/list: last UTC day, YYYY-MM-DD (default today)")
	key := a.fs.String("key", "", "requests: only this key")
	limit := a.fs.Int("limit", 50, "requests: most to show")
	pos, err := a.parse(args)
	if err != nil {
		return err
	}
	defer a.c.Close()
	if err := a.needWorkspace(); err != nil {
		return err
	}
	switch verb {
	case "get":
		if len(pos) != 1 {
			return errors.New("usage: keygate usage get <key-id> --workspace W [--model M]")
		}
		u, err := a.c.GetUsage(ctx, pos[0], *model)
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(u)
		}
		return a.table("DAY\tREQUESTS\tREQ LIMIT\tTOKENS\tTOKEN LIMIT\tSPEND\tBUDGET", [][]string{{
			u.GetDay(), strconv.FormatInt(u.GetRequestsToday(), 10), strconv.FormatInt(u.GetRequestLimitToday(), 10),
			strconv.FormatInt(u.GetTokensToday(), 10), strconv.FormatInt(u.GetTokenLimitToday(), 10), u.GetSpendUsd(), u.GetBudgetUsd(),
		}})
	case "list":
		g, ok := usagev1.GroupBy_value["GROUP_BY_"+strings.ToUpper(*groupBy)]
		if !ok || g == 0 {
			return fmt.Errorf("--group-by: want key, model or owner, got %q", *groupBy)
		}
		r, err := a.c.Usage.ListUsage(ctx, &usagev1.ListUsageRequest{Workspace: a.workspace, GroupBy: usagev1.GroupBy(g), StartDate: *from, EndDate: *to})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		rows := make([][]string, 0, len(r.GetRows()))
		for _, x := range r.GetRows() {
			rows = append(rows, []string{x.GetGroup(), strconv.FormatInt(x.GetRequests(), 10), strconv.FormatInt(x.GetPromptTokens(), 10), strconv.FormatInt(x.GetCompletionTokens(), 10), x.GetSpendUsd()})
		}
		return a.table("GROUP\tREQUESTS\tPROMPT\tCOMPLETION\tSPEND", rows)
	case "series":
		if len(pos) != 1 {
			return errors.New("usage: keygate usage series <key-id> --workspace W [--model M --from YYYY-MM-DD --to YYYY-MM-DD]")
		}
		r, err := a.c.Usage.GetUsageSeries(ctx, &usagev1.GetUsageSeriesRequest{Workspace: a.workspace, Key: pos[0], Model: *model, StartDate: *from, EndDate: *to})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		rows := make([][]string, 0, len(r.GetPoints()))
		for _, p := range r.GetPoints() {
			rows = append(rows, []string{p.GetDay(), strconv.FormatInt(p.GetRequests(), 10), strconv.FormatInt(p.GetPromptTokens(), 10), strconv.FormatInt(p.GetCompletionTokens(), 10), p.GetSpendUsd()})
		}
		return a.table("DAY\tREQUESTS\tPROMPT\tCOMPLETION\tSPEND", rows)
	case "requests":
		r, err := a.c.Usage.ListRequests(ctx, &usagev1.ListRequestsRequest{Workspace: a.workspace, Key: *key, Model: *model, PageSize: int32(*limit)})
		if err != nil {
			return err
		}
		if a.output == "json" {
			return a.json(r)
		}
		rows := make([][]string, 0, len(r.GetRequests()))
		for _, x := range r.GetRequests() {
			rows = append(rows, []string{x.GetTime().AsTime().UTC().Format(time.RFC3339), x.GetKey(), x.GetOwner(), x.GetModel(),
				strconv.FormatInt(x.GetPromptTokens()+x.GetCompletionTokens(), 10), x.GetCostUsd(),
				strings.TrimPrefix(x.GetStatus().String(), "REQUEST_STATUS_"), x.GetLatency().AsDuration().String()})
		}
		return a.table("TIME\tKEY\tOWNER\tMODEL\tTOKENS\tCOST\tSTATUS\tLATENCY", rows)
	}
	return fmt.Errorf("unknown command: usage %s (get, list, series, requests)", verb)
}
