package client

import (
	"context"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// AddCredits tops up the workspace's prepaid credits by amountUSD (exact
// decimal, e.g. "25.00"). id makes it idempotent: sent again, the entry
// already recorded is returned with replayed true and nothing changes.
func (c *Client) AddCredits(ctx context.Context, id, amountUSD, note string) (*keystorev1.CreditEntry, bool, error) {
	return c.creditEntry(ctx, keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_TOP_UP, id, amountUSD, note)
}

// AdjustCredits records a signed correction ("-3.50") to the credits.
func (c *Client) AdjustCredits(ctx context.Context, id, amountUSD, note string) (*keystorev1.CreditEntry, bool, error) {
	return c.creditEntry(ctx, keystorev1.CreditEntryKind_CREDIT_ENTRY_KIND_ADJUSTMENT, id, amountUSD, note)
}

func (c *Client) creditEntry(ctx context.Context, kind keystorev1.CreditEntryKind, id, amountUSD, note string) (*keystorev1.CreditEntry, bool, error) {
	r, err := c.Keystore.AddCreditEntry(ctx, &keystorev1.AddCreditEntryRequest{Workspace: c.workspace,
		Entry: &keystorev1.CreditEntry{Id: id, Kind: kind, AmountUsd: amountUSD, Note: note}})
	return r.GetEntry(), r.GetReplayed(), err
}

// Credits answers the workspace's credits: granted, spent and balance.
func (c *Client) Credits(ctx context.Context) (*keystorev1.GetCreditsResponse, error) {
	return c.Keystore.GetCredits(ctx, &keystorev1.GetCreditsRequest{Workspace: c.workspace})
}

// CreditEntries lists every credit entry, newest first.
func (c *Client) CreditEntries(ctx context.Context) ([]*keystorev1.CreditEntry, error) {
	return allPages(func(tok string) ([]*keystorev1.CreditEntry, string, error) {
		r, err := c.Keystore.ListCreditEntries(ctx, &keystorev1.ListCreditEntriesRequest{
			Workspace: c.workspace, PageSize: listPage, PageToken: tok})
		return r.GetEntries(), r.GetNextPageToken(), err
	})
}

// CreateWebhook adds a receiver of the workspace's alerts and returns it
// with its signing secret, shown only now.
func (c *Client) CreateWebhook(ctx context.Context, url, description string) (*keystorev1.Webhook, string, error) {
	r, err := c.Keystore.CreateWebhook(ctx, &keystorev1.CreateWebhookRequest{Workspace: c.workspace,
		Webhook: &keystorev1.Webhook{Url: url, Description: description}})
	return r.GetWebhook(), r.GetSecret(), err
}

// Webhooks lists the workspace's webhooks (without secrets).
func (c *Client) Webhooks(ctx context.Context) ([]*keystorev1.Webhook, error) {
	r, err := c.Keystore.ListWebhooks(ctx, &keystorev1.ListWebhooksRequest{Workspace: c.workspace})
	return r.GetWebhooks(), err
}

// RotateWebhookSecret replaces a webhook's signing secret and returns the
// new one, shown only now.
func (c *Client) RotateWebhookSecret(ctx context.Context, id string) (string, error) {
	r, err := c.Keystore.RotateWebhookSecret(ctx, &keystorev1.RotateWebhookSecretRequest{Workspace: c.workspace, Webhook: id})
	return r.GetSecret(), err
}

// TestWebhook sends a sample alert to a webhook now.
func (c *Client) TestWebhook(ctx context.Context, id string) (*keystorev1.TestWebhookResponse, error) {
	return c.Keystore.TestWebhook(ctx, &keystorev1.TestWebhookRequest{Workspace: c.workspace, Webhook: id})
}

// DeleteWebhook removes a webhook.
func (c *Client) DeleteWebhook(ctx context.Context, id string) error {
	_, err := c.Keystore.DeleteWebhook(ctx, &keystorev1.DeleteWebhookRequest{Workspace: c.workspace, Webhook: id})
	return err
}

// Alerts lists the workspace's alerts with their delivery state, newest
// first.
func (c *Client) Alerts(ctx context.Context) ([]*keystorev1.Alert, error) {
	return allPages(func(tok string) ([]*keystorev1.Alert, string, error) {
		r, err := c.Keystore.ListAlerts(ctx, &keystorev1.ListAlertsRequest{
			Workspace: c.workspace, PageSize: listPage, PageToken: tok})
		return r.GetAlerts(), r.GetNextPageToken(), err
	})
}

// listPage is the page size the listing helpers ask for.
const listPage = 500

// allPages follows page tokens until the last page.
func allPages[T any](page func(token string) ([]T, string, error)) ([]T, error) {
	var all []T
	tok := ""
	for {
		items, next, err := page(tok)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if next == "" {
			return all, nil
		}
		tok = next
	}
}
