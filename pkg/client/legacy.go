package client

import (
	"context"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// ImportKeys imports keys of the system keygate replaces by the SHA-256
// of their secrets; they authenticate at the edge and are marked legacy.
func (c *Client) ImportKeys(ctx context.Context, keys ...*keystorev1.ImportedKey) ([]*keystorev1.Key, error) {
	r, err := c.Keystore.ImportKeys(ctx, &keystorev1.ImportKeysRequest{Workspace: c.workspace, Keys: keys})
	return r.GetKeys(), err
}

// LegacyKeys lists the workspace's imported keys, to be replaced.
func (c *Client) LegacyKeys(ctx context.Context) ([]*keystorev1.Key, error) {
	return allPages(func(tok string) ([]*keystorev1.Key, string, error) {
		r, err := c.Keystore.ListKeys(ctx, &keystorev1.ListKeysRequest{
			Workspace: c.workspace, Legacy: true, PageSize: listPage, PageToken: tok})
		return r.GetKeys(), r.GetNextPageToken(), err
	})
}
