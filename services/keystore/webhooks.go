package keystore

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
)

// Webhooks are kept per workspace; each one's signing secret sits apart,
// under webhooksecret/, so that listing webhooks never reads a secret.
// The secret is stored as issued: the dispatcher needs it to sign.
const (
	webhooksDir       = prefix + "webhook/"
	webhookSecretsDir = prefix + "webhooksecret/"
	// maxWebhooks bounds a workspace's webhooks: each alert is sent to all.
	maxWebhooks = 10
	// secretPrefix marks a signing secret, as Standard Webhooks does.
	secretPrefix = "whsec_"
	// testTimeout bounds TestWebhook's one delivery.
	testTimeout = 5 * time.Second
)

func webhooksPrefix(ws string) string       { return webhooksDir + ws + "/" }
func webhookKey(ws, id string) string       { return webhooksPrefix(ws) + id }
func webhookSecretKey(ws, id string) string { return webhookSecretsDir + ws + "/" + id }

var webhookIDPattern = regexp.MustCompile(`^wh_[0-9a-f]{24}$`)

// validWebhookURL accepts an absolute http or https URL with a host and
// without credentials (they would be stored and shown in listings).
func validWebhookURL(raw string) error {
	if raw == "" || len(raw) > 2048 {
		return invalid("webhook.url", "required, at most 2048 characters")
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return invalid("webhook.url", "not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return invalid("webhook.url", "must be http:// or https://")
	case u.Host == "" || u.Hostname() == "":
		return invalid("webhook.url", "must name a host")
	case u.User != nil:
		return invalid("webhook.url", "must not hold a user name or password")
	}
	return nil
}

// newSecret is a signing secret: "whsec_" and the base64 of 32 random bytes.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return secretPrefix + base64.StdEncoding.EncodeToString(b)
}

func newWebhookID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "wh_" + hex.EncodeToString(b)
}

// Sign computes the webhook-signature header of a delivery, in the
// Standard Webhooks shape: "v1," and the base64 HMAC-SHA256, keyed by the
// secret as issued (the whole "whsec_…" string), of
// "<id>.<unix seconds>.<body>".
func Sign(secret, id string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(id + "." + strconv.FormatInt(ts.Unix(), 10) + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// canManageWebhooks: owners and admins.
func canManageWebhooks(p *principal, ws string) error {
	if err := p.inWorkspace(ws); err != nil {
		return err
	}
	if !p.manager() {
		return fmt.Errorf("%w: owners and admins manage webhooks", ErrPermissionDenied)
	}
	return nil
}

func (s *Server) createWebhook(ctx context.Context, p *principal, req *keystorev1.CreateWebhookRequest) (*keystorev1.CreateWebhookResponse, error) {
	ws := req.GetWorkspace()
	if err := canManageWebhooks(p, ws); err != nil {
		return nil, err
	}
	in := req.GetWebhook()
	if err := validWebhookURL(in.GetUrl()); err != nil {
		return nil, err
	}
	if len(in.GetDescription()) > 256 {
		return nil, invalid("webhook.description", "at most 256 characters")
	}
	if _, _, err := s.getWorkspace(ctx, ws); err != nil {
		return nil, err
	}
	have, err := s.etcd.Get(ctx, webhooksPrefix(ws), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil, fmt.Errorf("count webhooks: %w", err)
	}
	if have.Count >= maxWebhooks {
		return nil, fmt.Errorf("%w: a workspace has at most %d webhooks", ErrPrecondition, maxWebhooks)
	}
	now := timestamppb.New(s.clock.Now())
	w := &keystorev1.Webhook{Id: newWebhookID(), Workspace: ws, Url: in.GetUrl(), Description: in.GetDescription(), CreateTime: now, SecretTime: now}
	secret := newSecret()
	if err := s.putWebhook(ctx, p, w, secret, "webhook.create", nil, 0); err != nil {
		return nil, err
	}
	return &keystorev1.CreateWebhookResponse{Webhook: w, Secret: secret}, nil
}

// putWebhook writes a webhook and its secret, audited (the secret is not),
// if the webhook is still at revision rev (0: does not exist).
func (s *Server) putWebhook(ctx context.Context, p *principal, w *keystorev1.Webhook, secret, action string, old *keystorev1.Webhook, rev int64) error {
	v, err := marshal(w)
	if err != nil {
		return err
	}
	audit, err := s.auditOps(p, w.GetWorkspace(), "", action, old, w)
	if err != nil {
		return err
	}
	ops := append([]clientv3.Op{
		clientv3.OpPut(webhookKey(w.GetWorkspace(), w.GetId()), v),
		clientv3.OpPut(webhookSecretKey(w.GetWorkspace(), w.GetId()), secret),
	}, audit...)
	tx, err := s.etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(webhookKey(w.GetWorkspace(), w.GetId())), "=", rev)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("write webhook: %w", err)
	}
	if !tx.Succeeded {
		return fmt.Errorf("webhook %q: %w", w.GetId(), ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return nil
}

// webhooks lists a workspace's webhooks, without secrets.
func (s *Server) webhooks(ctx context.Context, ws string) ([]*keystorev1.Webhook, error) {
	resp, err := s.etcd.Get(ctx, webhooksPrefix(ws), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	out := make([]*keystorev1.Webhook, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		w := &keystorev1.Webhook{}
		if err := unmarshal(kv, w); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// webhook reads one webhook, its secret and its revision.
func (s *Server) webhook(ctx context.Context, ws, id string) (*keystorev1.Webhook, string, int64, error) {
	if !webhookIDPattern.MatchString(id) {
		return nil, "", 0, fmt.Errorf("webhook %q: %w", id, ErrNotFound)
	}
	resp, err := s.etcd.Txn(ctx).Then(clientv3.OpGet(webhookKey(ws, id)), clientv3.OpGet(webhookSecretKey(ws, id))).Commit()
	if err != nil {
		return nil, "", 0, fmt.Errorf("get webhook: %w", err)
	}
	kvs, skvs := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if len(kvs) == 0 || len(skvs) == 0 {
		return nil, "", 0, fmt.Errorf("webhook %q: %w", id, ErrNotFound)
	}
	w := &keystorev1.Webhook{}
	if err := unmarshal(kvs[0], w); err != nil {
		return nil, "", 0, err
	}
	return w, string(skvs[0].Value), kvs[0].ModRevision, nil
}

func (s *Server) listWebhooks(ctx context.Context, p *principal, ws string) (*keystorev1.ListWebhooksResponse, error) {
	if err := canManageWebhooks(p, ws); err != nil {
		return nil, err
	}
	if _, _, err := s.getWorkspace(ctx, ws); err != nil {
		return nil, err
	}
	hooks, err := s.webhooks(ctx, ws)
	return &keystorev1.ListWebhooksResponse{Webhooks: hooks}, err
}

func (s *Server) deleteWebhook(ctx context.Context, p *principal, req *keystorev1.DeleteWebhookRequest) error {
	ws := req.GetWorkspace()
	if err := canManageWebhooks(p, ws); err != nil {
		return err
	}
	w, _, rev, err := s.webhook(ctx, ws, req.GetWebhook())
	if err != nil {
		return err
	}
	audit, err := s.auditOps(p, ws, "", "webhook.delete", w, nil)
	if err != nil {
		return err
	}
	ops := append([]clientv3.Op{
		clientv3.OpDelete(webhookKey(ws, w.GetId())),
		clientv3.OpDelete(webhookSecretKey(ws, w.GetId())),
	}, audit...)
	tx, err := s.etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(webhookKey(ws, w.GetId())), "=", rev)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("delete webhook: %w", err)
	}
	if !tx.Succeeded {
		return fmt.Errorf("webhook %q: %w", w.GetId(), ErrConflict)
	}
	s.changes.Add(ctx, 1)
	return nil
}

// rotateWebhookSecret replaces the secret at once: every delivery from
// then on, retries of earlier alerts included, is signed with the new one.
func (s *Server) rotateWebhookSecret(ctx context.Context, p *principal, req *keystorev1.RotateWebhookSecretRequest) (*keystorev1.RotateWebhookSecretResponse, error) {
	ws := req.GetWorkspace()
	if err := canManageWebhooks(p, ws); err != nil {
		return nil, err
	}
	old, _, rev, err := s.webhook(ctx, ws, req.GetWebhook())
	if err != nil {
		return nil, err
	}
	w := &keystorev1.Webhook{Id: old.GetId(), Workspace: ws, Url: old.GetUrl(), Description: old.GetDescription(),
		CreateTime: old.GetCreateTime(), SecretTime: timestamppb.New(s.clock.Now())}
	secret := newSecret()
	if err := s.putWebhook(ctx, p, w, secret, "webhook.rotate_secret", old, rev); err != nil {
		return nil, err
	}
	return &keystorev1.RotateWebhookSecretResponse{Webhook: w, Secret: secret}, nil
}

// testWebhook sends a sample alert, marked test, now, and reports the
// receiver's answer. Nothing is stored or retried.
func (s *Server) testWebhook(ctx context.Context, p *principal, req *keystorev1.TestWebhookRequest) (*keystorev1.TestWebhookResponse, error) {
	ws := req.GetWorkspace()
	if err := canManageWebhooks(p, ws); err != nil {
		return nil, err
	}
	w, secret, _, err := s.webhook(ctx, ws, req.GetWebhook())
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	a := &keystorev1.Alert{
		Id: "test_" + newWebhookID()[3:], Workspace: ws, Level: typev1.LimitLevel_LIMIT_LEVEL_WORKSPACE, LevelId: ws,
		Limit: "budget", ThresholdPercent: 80, LimitValue: "100.00", Used: "80.00", Period: "month",
		PeriodStart: timestamppb.New(time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)),
		ResetTime:   timestamppb.New(time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC)),
		Time:        timestamppb.New(now), Test: true,
	}
	// Its own short deadline, apart from the call's storage timeout.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), testTimeout)
	defer cancel()
	code, err := s.post(dctx, w.GetUrl(), secret, a, now)
	out := &keystorev1.TestWebhookResponse{StatusCode: int32(code), Delivered: err == nil}
	if err != nil {
		out.Error = err.Error()
	}
	return out, nil
}

// post delivers one alert to one webhook: 2xx is delivered; any other
// answer or no answer is an error that names no secret.
func (s *Server) post(ctx context.Context, target, secret string, a *keystorev1.Alert, now time.Time) (int, error) {
	body, err := payload(a)
	if err != nil {
		return 0, err
	}
	sig := Sign(secret, a.GetId(), now, body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, errors.New("bad webhook URL")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "keygate-webhooks/1")
	req.Header.Set("webhook-id", a.GetId())
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := s.dispatch.HTTPClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// The URL is the caller's own; the cause is what they need.
			err = ue.Err
		}
		return 0, fmt.Errorf("not delivered: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("receiver answered %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}

func (s *Server) CreateWebhook(ctx context.Context, req *keystorev1.CreateWebhookRequest) (*keystorev1.CreateWebhookResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.CreateWebhookResponse, error) {
		return s.createWebhook(ctx, p, req)
	})
}

func (s *Server) ListWebhooks(ctx context.Context, req *keystorev1.ListWebhooksRequest) (*keystorev1.ListWebhooksResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ListWebhooksResponse, error) {
		return s.listWebhooks(ctx, p, req.GetWorkspace())
	})
}

func (s *Server) DeleteWebhook(ctx context.Context, req *keystorev1.DeleteWebhookRequest) (*keystorev1.DeleteWebhookResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.DeleteWebhookResponse, error) {
		return &keystorev1.DeleteWebhookResponse{}, s.deleteWebhook(ctx, p, req)
	})
}

func (s *Server) RotateWebhookSecret(ctx context.Context, req *keystorev1.RotateWebhookSecretRequest) (*keystorev1.RotateWebhookSecretResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.RotateWebhookSecretResponse, error) {
		return s.rotateWebhookSecret(ctx, p, req)
	})
}

func (s *Server) TestWebhook(ctx context.Context, req *keystorev1.TestWebhookRequest) (*keystorev1.TestWebhookResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.TestWebhookResponse, error) {
		return s.testWebhook(ctx, p, req)
	})
}
