package keystore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"reflect"
	"regexp"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/keyformat"
)

// auditIDPattern accepts ids with the replica suffix and those written
// before it (24 digits).
var auditIDPattern = regexp.MustCompile(`^[0-9a-f]{24}([0-9a-f]{8})?$`)

// auditJSON renders an object for the audit trail. The messages audited
// (Key, Workspace, Member, Provider, Model) carry no secret or hash.
func auditJSON(m proto.Message) string {
	if m == nil || reflect.ValueOf(m).IsNil() {
		return ""
	}
	b, err := protojson.Marshal(m)
	if err != nil {
		return ""
	}
	return string(b)
}

func (s *Server) listAuditEvents(ctx context.Context, p *principal, req *keystorev1.ListAuditEventsRequest) (*keystorev1.ListAuditEventsResponse, error) {
	ws := req.GetWorkspace()
	if ws == registryAudit {
		if err := p.requireRoot(); err != nil {
			return nil, err
		}
	} else {
		if err := p.inWorkspace(ws); err != nil {
			return nil, err
		}
		if !p.manager() {
			return nil, fmt.Errorf("%w: owners and admins read the audit log", ErrPermissionDenied)
		}
		if _, _, err := s.getWorkspace(ctx, ws); err != nil {
			return nil, err
		}
	}
	if k := req.GetKey(); k != "" && !keyformat.ValidID(k) {
		return nil, fmt.Errorf("key %q: %w", k, ErrNotFound)
	}
	size, after, err := listPage(req.GetPageSize(), req.GetPageToken(), auditIDPattern.MatchString)
	if err != nil {
		return nil, err
	}
	pfx := auditPrefix(ws, req.GetKey())
	from := pfx
	if after != "" {
		from = pfx + after + "\x00"
	}
	// IDs sort newest first, so this is a plain ascending limited range.
	resp, err := s.etcd.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(pfx)), clientv3.WithLimit(int64(size)))
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	out := &keystorev1.ListAuditEventsResponse{}
	for _, kv := range resp.Kvs {
		ev := &keystorev1.AuditEvent{}
		if err := unmarshal(kv, ev); err != nil {
			return nil, err
		}
		out.Events = append(out.Events, ev)
	}
	if resp.More && len(out.Events) > 0 {
		out.NextPageToken = pageToken(out.Events[len(out.Events)-1].GetId())
	}
	return out, nil
}

// randomUint32 draws a replica's audit id suffix.
func randomUint32() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return binary.BigEndian.Uint32(b[:])
}
