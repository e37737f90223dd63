// Package client is the Go SDK for keygate's management APIs. It needs only
// the gen module and gRPC: no etcd, no OpenTelemetry SDK.
//
//	c, err := client.New("keygate:9090", token, client.WithWorkspace("acme"))
//	key, secret, err := c.CreateKey(ctx, "web", client.KeySpec{Limits: &typev1.Limits{Rpm: 60}})
//	err = c.SetTokensPerDay(ctx, key.Id, 100_000, "")          // global
//	err = c.SetRequestsPerMinute(ctx, key.Id, 10, "mock-small") // one model
//	u, err := c.GetUsage(ctx, key.Id, "")
package client

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/auth"
	"github.com/keygate/keygate/pkg/protocheck"
)

// Client talks to a running keygate over gRPC.
type Client struct {
	Keystore  keystorev1.KeystoreServiceClient
	Usage     usagev1.UsageServiceClient
	conn      *grpc.ClientConn
	workspace string
}

type options struct {
	workspace string
	creds     credentials.TransportCredentials
	dial      []grpc.DialOption
}

// Option configures New.
type Option func(*options)

// WithWorkspace sets the workspace that key calls act in.
func WithWorkspace(ws string) Option { return func(o *options) { o.workspace = ws } }

// WithTLS dials with TLS (default: plaintext, for loopback and meshes).
func WithTLS(c credentials.TransportCredentials) Option { return func(o *options) { o.creds = c } }

// WithDialOptions adds gRPC dial options.
func WithDialOptions(d ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, d...) }
}

// New connects to addr with a credential: the root token, an admin key, or
// an OIDC ID token.
func New(addr, token string, opts ...Option) (*Client, error) {
	o := options{creds: insecure.NewCredentials()}
	for _, f := range opts {
		f(&o)
	}
	secure := o.creds.Info().SecurityProtocol != "insecure"
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(o.creds),
		grpc.WithPerRPCCredentials(auth.Token{Value: token, Secure: secure}),
		// A request gRPC cannot marshal (a string that is not UTF-8) is
		// INVALID_ARGUMENT naming the field, not INTERNAL.
		grpc.WithChainUnaryInterceptor(protocheck.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(protocheck.StreamClientInterceptor()),
	}, o.dial...)
	cc, err := grpc.NewClient(addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("keygate client: %w", err)
	}
	return &Client{Keystore: keystorev1.NewKeystoreServiceClient(cc), Usage: usagev1.NewUsageServiceClient(cc), conn: cc, workspace: o.workspace}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Workspace returns the workspace key calls act in.
func (c *Client) Workspace() string { return c.workspace }

// KeySpec describes a key to create.
type KeySpec struct {
	Kind          keystorev1.KeyKind
	Owner         string
	Expire        *timestamppb.Timestamp
	AllowedModels []string
	Labels        map[string]string
	Limits        *typev1.Limits
	ModelLimits   []*typev1.ModelLimits
	TokenCap      *typev1.TokenCap
	Budget        *typev1.Budget
	Disabled      bool
}

// CreateKey creates a key and returns it with its secret, shown only now.
func (c *Client) CreateKey(ctx context.Context, name string, s KeySpec) (*keystorev1.Key, string, error) {
	r, err := c.Keystore.CreateKey(ctx, &keystorev1.CreateKeyRequest{
		Workspace: c.workspace, Name: name, Kind: s.Kind, Owner: s.Owner, ExpireTime: s.Expire,
		AllowedModels: s.AllowedModels, Labels: s.Labels, GlobalLimits: s.Limits, ModelLimits: s.ModelLimits,
		TokenCap: s.TokenCap, Budget: s.Budget, Disabled: s.Disabled,
	})
	if err != nil {
		return nil, "", err
	}
	return r.GetKey(), r.GetSecret(), nil
}

// GetKey reads a key.
func (c *Client) GetKey(ctx context.Context, keyID string) (*keystorev1.Key, error) {
	r, err := c.Keystore.GetKey(ctx, &keystorev1.GetKeyRequest{Workspace: c.workspace, Key: keyID})
	return r.GetKey(), err
}

// SetRequestsPerMinute sets a key's rpm, for one model or (model "") globally.
func (c *Client) SetRequestsPerMinute(ctx context.Context, keyID string, n int64, model string) error {
	return c.setLimit(ctx, keyID, model, func(l *typev1.Limits) { l.Rpm = n })
}

// SetRequestsPerDay sets a key's rpd, for one model or globally.
func (c *Client) SetRequestsPerDay(ctx context.Context, keyID string, n int64, model string) error {
	return c.setLimit(ctx, keyID, model, func(l *typev1.Limits) { l.Rpd = n })
}

// SetTokensPerMinute sets a key's tpm, for one model or globally.
func (c *Client) SetTokensPerMinute(ctx context.Context, keyID string, n int64, model string) error {
	return c.setLimit(ctx, keyID, model, func(l *typev1.Limits) { l.Tpm = n })
}

// SetTokensPerDay sets a key's tpd, for one model or globally.
func (c *Client) SetTokensPerDay(ctx context.Context, keyID string, n int64, model string) error {
	return c.setLimit(ctx, keyID, model, func(l *typev1.Limits) { l.Tpd = n })
}

// SetBudget sets a key's cost budget, e.g. "5.00" per RESET_PERIOD_MONTHLY.
func (c *Client) SetBudget(ctx context.Context, keyID, amountUSD string, period typev1.ResetPeriod) error {
	return c.update(ctx, keyID, []string{"budget"}, func(k *keystorev1.Key) {
		k.Budget = &typev1.Budget{AmountUsd: amountUSD, ResetPeriod: period}
	})
}

// SetTokenCap sets a key's token cap per reset period.
func (c *Client) SetTokenCap(ctx context.Context, keyID string, tokens int64, period typev1.ResetPeriod) error {
	return c.update(ctx, keyID, []string{"token_cap"}, func(k *keystorev1.Key) {
		k.TokenCap = &typev1.TokenCap{Tokens: tokens, ResetPeriod: period}
	})
}

// SetEnabled disables or enables a key.
func (c *Client) SetEnabled(ctx context.Context, keyID string, enabled bool) error {
	return c.update(ctx, keyID, []string{"enabled"}, func(k *keystorev1.Key) { k.Enabled = enabled })
}

// Rotate issues a new secret; the old one works until grace (nil: not at all).
func (c *Client) Rotate(ctx context.Context, keyID string, grace *timestamppb.Timestamp) (*keystorev1.Key, string, error) {
	r, err := c.Keystore.RotateKey(ctx, &keystorev1.RotateKeyRequest{Workspace: c.workspace, Key: keyID, GraceExpireTime: grace})
	return r.GetKey(), r.GetSecret(), err
}

// Expire ends a key now and keeps its record.
func (c *Client) Expire(ctx context.Context, keyID string) error {
	_, err := c.Keystore.ExpireKey(ctx, &keystorev1.ExpireKeyRequest{Workspace: c.workspace, Key: keyID})
	return err
}

// Delete removes a key for good.
func (c *Client) Delete(ctx context.Context, keyID string) error {
	_, err := c.Keystore.DeleteKey(ctx, &keystorev1.DeleteKeyRequest{Workspace: c.workspace, Key: keyID})
	return err
}

// GetUsage answers a key's usage today and in its budget period, for one
// model or (model "") in total.
func (c *Client) GetUsage(ctx context.Context, keyID, model string) (*usagev1.GetUsageResponse, error) {
	return c.Usage.GetUsage(ctx, &usagev1.GetUsageRequest{Workspace: c.workspace, Key: keyID, Model: model})
}

// maxRetries bounds read-modify-write retries when another writer wins.
const maxRetries = 5

func (c *Client) setLimit(ctx context.Context, keyID, model string, set func(*typev1.Limits)) error {
	if model == "" {
		return c.update(ctx, keyID, []string{"global_limits"}, func(k *keystorev1.Key) {
			if k.GlobalLimits == nil {
				k.GlobalLimits = &typev1.Limits{}
			}
			set(k.GlobalLimits)
		})
	}
	return c.update(ctx, keyID, []string{"model_limits"}, func(k *keystorev1.Key) {
		for _, ml := range k.ModelLimits {
			if ml.GetModel() == model {
				if ml.Limits == nil {
					ml.Limits = &typev1.Limits{}
				}
				set(ml.Limits)
				return
			}
		}
		l := &typev1.Limits{}
		set(l)
		k.ModelLimits = append(k.ModelLimits, &typev1.ModelLimits{Model: model, Limits: l})
	})
}

// update reads the key, changes one field, and writes it back under the
// read etag; when another writer got there first it reads again.
func (c *Client) update(ctx context.Context, keyID string, fields []string, change func(*keystorev1.Key)) error {
	for attempt := 0; ; attempt++ {
		k, err := c.GetKey(ctx, keyID)
		if err != nil {
			return err
		}
		patch := proto.Clone(k).(*keystorev1.Key)
		change(patch)
		_, err = c.Keystore.UpdateKey(ctx, &keystorev1.UpdateKeyRequest{
			Workspace: c.workspace, Key: keyID, Patch: patch, Etag: k.GetEtag(),
			UpdateMask: &fieldmaskpb.FieldMask{Paths: fields},
		})
		if status.Code(err) == codes.Aborted && attempt < maxRetries {
			continue
		}
		if err != nil && errors.Is(ctx.Err(), context.Canceled) {
			return ctx.Err()
		}
		return err
	}
}
