package keystore

import (
	"context"
	"fmt"
	"regexp"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
)

const (
	// reportedDir holds, per key and report-mode limit, the minute of the
	// last "limit.report" audit event, which samples them: at most one
	// event per key and limit a minute, whichever edge or replica sends.
	reportedDir = prefix + "reported/"
	// maxReportedPerUse bounds the limits one use may name (the edge keeps
	// at most 32 per key between sends).
	maxReportedPerUse = 32
)

// reportedLimit is a limit as the edge names it: "workspace/tpd",
// "key/rpm:gpt-4o".
var reportedLimit = regexp.MustCompile(`^(key|member|workspace)/[a-z_]{3,16}(:[A-Za-z0-9._:/-]{1,128})?$`)

func reportedKey(ws, id, limit string) string { return reportedDir + ws + "/" + id + "/" + limit }

// validReported checks the limits one use names.
func validReported(field string, reported []string) error {
	if len(reported) > maxReportedPerUse {
		return invalid(field, "at most %d limits, got %d", maxReportedPerUse, len(reported))
	}
	for _, r := range reported {
		if !reportedLimit.MatchString(r) {
			return invalid(field, "%q is not a limit such as workspace/tpd", r)
		}
	}
	return nil
}

// auditReported writes the sampled "limit.report" audit events of the
// report-mode limits that would have denied a key's requests.
func (s *Server) auditReported(ctx context.Context, p *principal, u *keystorev1.KeyUse) error {
	minute := s.clock.Now().Unix() / 60
	for _, limit := range u.GetReported() {
		ops, err := s.reportOnce(p, u, limit, minute)
		if err != nil {
			return err
		}
		if _, err := s.etcd.Txn(ctx).Then(ops).Commit(); err != nil {
			return fmt.Errorf("audit reported limit: %w", err)
		}
	}
	return nil
}

// reportOnce audits limit for u's key unless it was audited in this
// minute already, and only while the key exists.
func (s *Server) reportOnce(p *principal, u *keystorev1.KeyUse, limit string, minute int64) (clientv3.Op, error) {
	ev := &keystorev1.KeyUse{Workspace: u.GetWorkspace(), Key: u.GetKey(), Time: timestamppb.New(time.Unix(minute*60, 0)), Reported: []string{limit}}
	audit, err := s.auditOps(p, u.GetWorkspace(), u.GetKey(), "limit.report", nil, ev)
	if err != nil {
		return clientv3.Op{}, err
	}
	m := reportedKey(u.GetWorkspace(), u.GetKey(), limit)
	v := ordered(minute)
	write := append([]clientv3.Op{clientv3.OpPut(m, v)}, audit...)
	exists := clientv3.Compare(clientv3.CreateRevision(keyKey(u.GetWorkspace(), u.GetKey())), ">", 0)
	first := clientv3.OpTxn([]clientv3.Cmp{exists, clientv3.Compare(clientv3.CreateRevision(m), "=", 0)}, write, nil)
	return clientv3.OpTxn([]clientv3.Cmp{exists, clientv3.Compare(clientv3.Value(m), "<", v)}, write, []clientv3.Op{first}), nil
}
