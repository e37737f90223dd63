// Package alertbox is the durable outbox of alerts in etcd. Limiters raise
// an alert when a limit's usage first crosses a threshold in a period; the
// keystore's dispatcher delivers it to the workspace's webhooks.
//
// Layout:
//
//	/keygate/alerts/ws/<workspace>/<id>  the alert (binary proto), kept as its log
//	/keygate/alerts/pending/<id>         its workspace: still to deliver
//	/keygate/alerts/time/<workspace>/<inverted time>/<id>  its id: the log newest first
//	/keygate/alerts/delivery/<id>/<webhook>  one webhook's delivery (delivery.go)
//	/keygate/alerts/leader/             the dispatcher election
//
// An alert's id is derived from what it is about (workspace, level, limit,
// model, period start, threshold), and Raise writes both keys in one
// transaction only if the alert does not exist yet: every limiter that sees
// the same crossing (a replica after a crash, a retry) raises it at most
// once per period per threshold.
package alertbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

// The key prefixes.
const (
	Prefix        = "/keygate/alerts/"
	WorkspaceRoot = Prefix + "ws/"
	PendingRoot   = Prefix + "pending/"
	TimeRoot      = Prefix + "time/"
	DeliveryRoot  = Prefix + "delivery/"
	// LeaderPrefix is the election of the one keystore that dispatches.
	LeaderPrefix = Prefix + "leader/"
)

// ID is the alert's identity: the same crossing always has the same id.
func ID(a *keystorev1.Alert) string {
	h := sha256.New()
	for _, s := range []string{
		a.GetWorkspace(), a.GetLevel().String(), a.GetLevelId(), a.GetLimit(), a.GetModel(),
		a.GetPeriod(), strconv.FormatInt(a.GetPeriodStart().GetSeconds(), 10),
		strconv.Itoa(int(a.GetThresholdPercent())),
	} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return "al_" + hex.EncodeToString(h.Sum(nil)[:16])
}

// LogKey is where the alert is kept.
func LogKey(workspace, id string) string { return WorkspaceRoot + workspace + "/" + id }

// PendingKey marks the alert as still to deliver.
func PendingKey(id string) string { return PendingRoot + id }

// TimePrefix lists a workspace's alerts newest first.
func TimePrefix(workspace string) string { return TimeRoot + workspace + "/" }

// TimeKey orders the alert in its workspace's log: inverted raise time, so
// that an ascending range read is newest first.
func TimeKey(a *keystorev1.Alert) string {
	return TimePrefix(a.GetWorkspace()) + fmt.Sprintf("%016x", ^uint64(a.GetTime().AsTime().UnixNano())) + "/" + a.GetId()
}

// Raise stores a new alert (its id set from ID) as pending. It reports
// false, changing nothing, when the alert was raised before.
func Raise(ctx context.Context, cli *clientv3.Client, a *keystorev1.Alert) (bool, error) {
	a = proto.CloneOf(a)
	a.Id = ID(a)
	a.DeliveryState = keystorev1.AlertDeliveryState_ALERT_DELIVERY_STATE_PENDING
	b, err := proto.Marshal(a)
	if err != nil {
		return false, fmt.Errorf("alertbox: encode: %w", err)
	}
	lk := LogKey(a.GetWorkspace(), a.GetId())
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)).
		Then(clientv3.OpPut(lk, string(b)), clientv3.OpPut(PendingKey(a.GetId()), a.GetWorkspace()),
			clientv3.OpPut(TimeKey(a), a.GetId())).
		Commit()
	if err != nil {
		return false, fmt.Errorf("alertbox: raise %s: %w", a.GetId(), err)
	}
	return resp.Succeeded, nil
}
