package keystore

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/money"
)

// Credit entries are kept per workspace under an id that sorts newest
// first (the audit log's scheme), so a page is one limited range read;
// creditid/ maps the caller's idempotency id to it.
const (
	creditsDir   = prefix + "credit/"
	creditIDsDir = prefix + "creditid/"
)

func creditsPrefix(ws string) string   { return creditsDir + ws + "/" }
func creditIDKey(ws, id string) string { return creditIDsDir + ws + "/" + id }
func creditKey(ws, seq string) string  { return creditsPrefix(ws) + seq }
func tooLarge(a money.Nanos) bool      { return a > maxCredits || a < -maxCredits }

// maxCredits bounds a workspace's granted credits ($1 billion), far from
// where nano-dollar int64 sums overflow.
const maxCredits = money.Nanos(1_000_000_000 * money.Scale)

var creditIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)

// CreditSpend answers a workspace's credit spend (all time): the usage
// ledger's sum of the requests drawn from credits.
type CreditSpend interface {
	CreditSpent(ctx context.Context, workspace string) (money.Nanos, error)
}

// UsageCreditSpend reads credit spend from the usage service. The
// connection must carry the service token.
type UsageCreditSpend struct {
	Usage usagev1.UsageServiceClient
}

var _ CreditSpend = UsageCreditSpend{}

// CreditSpent implements CreditSpend.
func (u UsageCreditSpend) CreditSpent(ctx context.Context, workspace string) (money.Nanos, error) {
	resp, err := u.Usage.GetTotals(ctx, &usagev1.GetTotalsRequest{Queries: []*usagev1.TotalsQuery{{
		Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, Workspace: workspace, Credits: true,
	}}})
	if err != nil {
		return 0, fmt.Errorf("credit spend of %q: %w", workspace, err)
	}
	for _, t := range resp.GetTotals() {
		if t.GetModel() == "" {
			return money.FromMicros(t.GetCreditSpentMicros()), nil
		}
	}
	return 0, nil
}

// errNoCreditSpend means GetCredits has nothing to read the spend from.
var errNoCreditSpend = fmt.Errorf("%w: this keystore has no usage service to read credit spend from", ErrPrecondition)

// creditEntry checks an entry as sent and returns its amount.
func creditEntry(e *keystorev1.CreditEntry) (money.Nanos, error) {
	if !creditIDPattern.MatchString(e.GetId()) {
		return 0, invalid("entry.id", "the idempotency id is required: 1-128 letters, digits, '-', '_', '.', ':'")
	}
	if len(e.GetNote()) > 512 {
		return 0, invalid("entry.note", "at most 512 characters")
	}
	amount, err := money.ParseSigned(e.GetAmountUsd())
	if err != nil {
		return 0, invalid("entry.amount_usd", "want an exact decimal USD amount such as \"25.00\" or \"-2.5\", at most 6 decimal places")
	}
	if tooLarge(amount) {
		return 0, invalid("entry.amount_usd", "at most %s in one entry", maxCredits)
	}
	switch e.GetKind() {
	case keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_TOP_UP:
		if amount <= 0 {
			return 0, invalid("entry.amount_usd", "a top-up must be positive")
		}
	case keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_ADJUSTMENT:
		if amount == 0 {
			return 0, invalid("entry.amount_usd", "an adjustment must not be zero")
		}
	default:
		return 0, invalid("entry.kind", "must be CREDIT_ENTRY_KIND_TOP_UP or CREDIT_ENTRY_KIND_ADJUSTMENT")
	}
	return amount, nil
}

// granted reads a workspace's credits; empty is none.
func granted(w *keystorev1.Workspace) (money.Nanos, error) {
	if w.GetCreditsGrantedUsd() == "" {
		return 0, nil
	}
	n, err := money.ParseSigned(w.GetCreditsGrantedUsd())
	if err != nil {
		return 0, fmt.Errorf("workspace %q: bad credits_granted_usd: %w", w.GetId(), err)
	}
	return n, nil
}

// addCreditEntry records an entry and adds it to the workspace's credits
// in one transaction: the entry exists if and only if it was counted.
func (s *Server) addCreditEntry(ctx context.Context, p *principal, req *keystorev1.AddCreditEntryRequest) (*keystorev1.AddCreditEntryResponse, error) {
	ws := req.GetWorkspace()
	if err := p.inWorkspace(ws); err != nil {
		return nil, err
	}
	if !p.root && p.role != keystorev1.Role_ROLE_OWNER {
		return nil, fmt.Errorf("%w: only owners add credits", ErrPermissionDenied)
	}
	amount, err := creditEntry(req.GetEntry())
	if err != nil {
		return nil, err
	}
	in := req.GetEntry()
	entry := &keystorev1.CreditEntry{
		Id: in.GetId(), Kind: in.GetKind(), AmountUsd: amount.String(), Note: in.GetNote(),
		Actor: p.subject, CreateTime: timestamppb.New(s.clock.Now()),
	}
	for {
		resp, done, err := s.tryAddCredit(ctx, p, ws, entry, amount)
		if done || err != nil {
			return resp, err
		}
	}
}

// tryAddCredit makes one attempt; done is false when the workspace changed
// meanwhile (compare-and-swap on its revision) and the caller retries.
func (s *Server) tryAddCredit(ctx context.Context, p *principal, ws string, entry *keystorev1.CreditEntry, amount money.Nanos) (*keystorev1.AddCreditEntryResponse, bool, error) {
	w, _, err := s.getWorkspace(ctx, ws)
	if err != nil {
		return nil, true, err
	}
	prior, err := s.creditEntryByID(ctx, ws, entry.GetId())
	if err != nil {
		return nil, true, err
	}
	if prior != nil {
		resp, err := replay(prior, entry)
		return resp, true, err
	}
	total, err := granted(w)
	if err != nil {
		return nil, true, err
	}
	sum := total + amount
	switch {
	case tooLarge(sum):
		return nil, true, fmt.Errorf("%w: the workspace's credits would pass %s", ErrPrecondition, maxCredits)
	case sum < 0:
		return nil, true, fmt.Errorf("%w: the adjustment would leave the workspace's granted credits (%s) negative", ErrPrecondition, total)
	}
	rev, _ := strconv.ParseInt(w.GetEtag(), 10, 64)
	old := proto.CloneOf(w)
	w.CreditsGrantedUsd = sum.String()
	store := proto.CloneOf(w)
	store.KeyCount, store.Etag = 0, ""
	wv, err := marshal(store)
	if err != nil {
		return nil, true, err
	}
	seq := s.auditID(entry.GetCreateTime().AsTime())
	ev, err := marshal(entry)
	if err != nil {
		return nil, true, err
	}
	audit, err := s.auditOps(p, ws, "", "credits.add", old, entry)
	if err != nil {
		return nil, true, err
	}
	ops := append([]clientv3.Op{
		clientv3.OpPut(creditKey(ws, seq), ev),
		clientv3.OpPut(creditIDKey(ws, entry.GetId()), seq),
		clientv3.OpPut(workspaceKey(ws), wv),
		levelMarkerOp(ws, ""),
	}, audit...)
	tx, err := s.etcd.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(creditIDKey(ws, entry.GetId())), "=", 0),
		clientv3.Compare(clientv3.ModRevision(workspaceKey(ws)), "=", rev),
	).Then(ops...).Commit()
	if err != nil {
		return nil, true, fmt.Errorf("add credit entry: %w", err)
	}
	if !tx.Succeeded {
		return nil, false, nil
	}
	s.changes.Add(ctx, 1)
	return &keystorev1.AddCreditEntryResponse{Entry: entry}, true, nil
}

// replay answers an entry sent again: the first one, when it is the same
// movement; a different movement under a used id is refused, never
// counted.
func replay(prior, sent *keystorev1.CreditEntry) (*keystorev1.AddCreditEntryResponse, error) {
	if prior.GetKind() != sent.GetKind() || prior.GetAmountUsd() != sent.GetAmountUsd() {
		return nil, fmt.Errorf("credit entry %q: %w: it was recorded as %s %s; choose a new id for a new entry",
			sent.GetId(), ErrAlreadyExists, prior.GetKind(), prior.GetAmountUsd())
	}
	return &keystorev1.AddCreditEntryResponse{Entry: prior, Replayed: true}, nil
}

func (s *Server) creditEntryByID(ctx context.Context, ws, id string) (*keystorev1.CreditEntry, error) {
	resp, err := s.etcd.Get(ctx, creditIDKey(ws, id))
	if err != nil {
		return nil, fmt.Errorf("read credit entry: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	er, err := s.etcd.Get(ctx, creditKey(ws, string(resp.Kvs[0].Value)))
	if err != nil {
		return nil, fmt.Errorf("read credit entry: %w", err)
	}
	if len(er.Kvs) == 0 {
		return nil, fmt.Errorf("credit entry %q: index without entry", id)
	}
	e := &keystorev1.CreditEntry{}
	return e, unmarshal(er.Kvs[0], e)
}

func (s *Server) getCredits(ctx context.Context, p *principal, ws string) (*keystorev1.GetCreditsResponse, error) {
	w, _, err := s.readWorkspace(ctx, p, ws)
	if err != nil {
		return nil, err
	}
	total, err := granted(w)
	if err != nil {
		return nil, err
	}
	out := &keystorev1.GetCreditsResponse{GrantedUsd: total.String(), SpentUsd: money.Nanos(0).String(), BalanceUsd: total.String()}
	if w.GetCreditsGrantedUsd() == "" {
		// Never held credits: nothing was drawn from them.
		return out, nil
	}
	out.Enabled = true
	if s.creditSpend == nil {
		return nil, errNoCreditSpend
	}
	spent, err := s.creditSpend.CreditSpent(ctx, ws)
	if err != nil {
		return nil, err
	}
	out.SpentUsd, out.BalanceUsd = spent.String(), (total - spent).String()
	return out, nil
}

func (s *Server) listCreditEntries(ctx context.Context, p *principal, req *keystorev1.ListCreditEntriesRequest) (*keystorev1.ListCreditEntriesResponse, error) {
	ws := req.GetWorkspace()
	if _, _, err := s.readWorkspace(ctx, p, ws); err != nil {
		return nil, err
	}
	if !p.manager() {
		return nil, fmt.Errorf("%w: owners and admins read the credit entries", ErrPermissionDenied)
	}
	size, after, err := listPage(req.GetPageSize(), req.GetPageToken(), auditIDPattern.MatchString)
	if err != nil {
		return nil, err
	}
	kvs, more, err := s.page(ctx, creditsPrefix(ws), after, size)
	if err != nil {
		return nil, fmt.Errorf("list credit entries: %w", err)
	}
	out := &keystorev1.ListCreditEntriesResponse{}
	for _, kv := range kvs {
		e := &keystorev1.CreditEntry{}
		if err := unmarshal(kv, e); err != nil {
			return nil, err
		}
		out.Entries = append(out.Entries, e)
	}
	if more && len(kvs) > 0 {
		out.NextPageToken = pageToken(strings.TrimPrefix(string(kvs[len(kvs)-1].Key), creditsPrefix(ws)))
	}
	return out, nil
}

// page reads up to size keys under pfx after the key pfx+after, in key
// order: one limited range read per page.
func (s *Server) page(ctx context.Context, pfx, after string, size int) ([]*mvccpb.KeyValue, bool, error) {
	from := pfx
	if after != "" {
		from = pfx + after + "\x00"
	}
	resp, err := s.etcd.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(pfx)), clientv3.WithLimit(int64(size)))
	if err != nil {
		return nil, false, err
	}
	return resp.Kvs, resp.More, nil
}

func (s *Server) AddCreditEntry(ctx context.Context, req *keystorev1.AddCreditEntryRequest) (*keystorev1.AddCreditEntryResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.AddCreditEntryResponse, error) {
		return s.addCreditEntry(ctx, p, req)
	})
}

func (s *Server) GetCredits(ctx context.Context, req *keystorev1.GetCreditsRequest) (*keystorev1.GetCreditsResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.GetCreditsResponse, error) {
		return s.getCredits(ctx, p, req.GetWorkspace())
	})
}

func (s *Server) ListCreditEntries(ctx context.Context, req *keystorev1.ListCreditEntriesRequest) (*keystorev1.ListCreditEntriesResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ListCreditEntriesResponse, error) {
		return s.listCreditEntries(ctx, p, req)
	})
}
