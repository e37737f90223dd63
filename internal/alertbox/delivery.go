package alertbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// Delivery is where one alert's delivery to one webhook stands. The
// dispatcher writes it right after each attempt, so a dispatcher that
// crashes resumes where the last one stopped.
type Delivery struct {
	// PENDING, DELIVERED or FAILED.
	State    keystorev1.AlertDeliveryState `json:"state"`
	Attempts int32                         `json:"attempts"`
	// Next is when a failed attempt is retried.
	Next       time.Time `json:"next,omitzero"`
	LastStatus int       `json:"last_status,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
}

// Done reports whether nothing more is to be sent.
func (d Delivery) Done() bool {
	return d.State == keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_DELIVERED ||
		d.State == keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_FAILED
}

// DeliveryPrefix holds the deliveries of one alert.
func DeliveryPrefix(id string) string { return DeliveryRoot + id + "/" }

// DeliveryKey is one webhook's delivery of the alert.
func DeliveryKey(id, webhook string) string { return DeliveryPrefix(id) + webhook }

// DeliveryOp records a delivery.
func DeliveryOp(id, webhook string, d Delivery) (clientv3.Op, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return clientv3.Op{}, fmt.Errorf("alertbox: encode delivery: %w", err)
	}
	return clientv3.OpPut(DeliveryKey(id, webhook), string(b)), nil
}

// StillPending holds while the alert awaits delivery: the condition of
// every write about it, so that nothing is recorded twice.
func StillPending(id string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(PendingKey(id)), ">", 0)
}

// Ref names a pending alert.
type Ref struct{ ID, Workspace string }

// Pending lists the alerts still to deliver.
func Pending(ctx context.Context, cli *clientv3.Client) ([]Ref, error) {
	resp, err := cli.Get(ctx, PendingRoot, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("alertbox: pending: %w", err)
	}
	out := make([]Ref, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, Ref{ID: strings.TrimPrefix(string(kv.Key), PendingRoot), Workspace: string(kv.Value)})
	}
	return out, nil
}

// Get reads an alert and its deliveries; nil when it does not exist.
func Get(ctx context.Context, cli *clientv3.Client, workspace, id string) (*keystorev1.Alert, map[string]Delivery, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(LogKey(workspace, id)),
		clientv3.OpGet(DeliveryPrefix(id), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("alertbox: get %s: %w", id, err)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, nil, nil
	}
	a := &keystorev1.Alert{}
	if err := proto.Unmarshal(kvs[0].Value, a); err != nil {
		return nil, nil, fmt.Errorf("alertbox: decode %s: %w", id, err)
	}
	ds := map[string]Delivery{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var d Delivery
		if err := json.Unmarshal(kv.Value, &d); err != nil {
			return nil, nil, fmt.Errorf("alertbox: decode delivery %s: %w", kv.Key, err)
		}
		ds[strings.TrimPrefix(string(kv.Key), DeliveryPrefix(id))] = d
	}
	return a, ds, nil
}

// Attempts is the number of attempts over every webhook.
func Attempts(ds map[string]Delivery) int32 {
	var n int32
	for _, d := range ds {
		n += d.Attempts
	}
	return n
}

// SettleOps end an alert's delivery: the log keeps its final state and
// attempts; it is no longer pending.
func SettleOps(a *keystorev1.Alert) ([]clientv3.Op, error) {
	b, err := proto.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("alertbox: encode: %w", err)
	}
	return []clientv3.Op{
		clientv3.OpPut(LogKey(a.GetWorkspace(), a.GetId()), string(b)),
		clientv3.OpDelete(PendingKey(a.GetId())),
		clientv3.OpDelete(DeliveryPrefix(a.GetId()), clientv3.WithPrefix()),
	}, nil
}

// List reads a page of a workspace's alerts, newest first, after the
// position a previous page returned ("" for the first); next is "" on the
// last page. A pending alert's attempts are its deliveries' so far.
func List(ctx context.Context, cli *clientv3.Client, workspace, after string, limit int) (alerts []*keystorev1.Alert, next string, err error) {
	pfx := TimePrefix(workspace)
	from := pfx
	if after != "" {
		from = pfx + after + "\x00"
	}
	resp, err := cli.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(pfx)), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, "", fmt.Errorf("alertbox: list: %w", err)
	}
	for _, kv := range resp.Kvs {
		a, ds, err := Get(ctx, cli, workspace, string(kv.Value))
		if err != nil {
			return nil, "", err
		}
		if a == nil {
			continue
		}
		if a.GetDeliveryState() == keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_PENDING {
			a.Attempts = Attempts(ds)
		}
		alerts = append(alerts, a)
	}
	if resp.More && len(resp.Kvs) > 0 {
		next = strings.TrimPrefix(string(resp.Kvs[len(resp.Kvs)-1].Key), pfx)
	}
	return alerts, next, nil
}

// ValidPosition checks a position a page returned.
func ValidPosition(p string) bool {
	t, id, ok := strings.Cut(p, "/")
	return ok && len(t) == 16 && strings.HasPrefix(id, "al_") && len(id) == 35 && !strings.ContainsAny(id, "/\x00")
}
