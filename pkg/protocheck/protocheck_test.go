package protocheck_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	typev1 "github.com/keygate/keygate/gen/keygate/type/v1"
	"github.com/keygate/keygate/pkg/protocheck"
)

func TestCheckNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		msg   proto.Message
		field string
	}{
		{&keystorev1.GetKeyRequest{Workspace: "acme", Key: "\xff"}, "key"},
		{&keystorev1.ListKeysRequest{Workspace: "acme", PageToken: "a\xffb"}, "page_token"},
		{&keystorev1.UpdateKeyRequest{UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name", "x\xff"}}}, "update_mask.paths[1]"},
		{&keystorev1.UpdateKeyRequest{Patch: &keystorev1.Key{Name: "\xc3"}}, "patch.name"},
		{&keystorev1.UpdateKeyRequest{Patch: &keystorev1.Key{Labels: map[string]string{"team": "\xff"}}}, `patch.labels["team"]`},
		{&keystorev1.UpdateKeyRequest{Patch: &keystorev1.Key{Labels: map[string]string{"\xff": "x"}}}, "patch.labels (a key)"},
		{&keystorev1.CreateKeyRequest{ModelLimits: []*typev1.ModelLimits{{Model: "ok"}, {Model: "\xfe"}}}, "model_limits[1].model"},
	} {
		err := protocheck.Check(tc.msg)
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", tc.msg)
		require.Equal(t, tc.field+": must be valid UTF-8 text", status.Convert(err).Message())
		_, merr := proto.Marshal(tc.msg)
		require.Error(t, merr, "Check refuses only what protobuf refuses")
	}
	for _, m := range []proto.Message{
		nil,
		&keystorev1.GetKeyRequest{Workspace: "acme", Key: "k1"},
		&keystorev1.UpdateKeyRequest{Patch: &keystorev1.Key{Name: "Ünïcödé ✓ 🔑", Labels: map[string]string{"é": "日本"}}},
	} {
		require.NoError(t, protocheck.Check(m))
	}
}

// conn records whether a call got through.
type conn struct{ calls int }

func (c *conn) Invoke(context.Context, string, any, any, ...grpc.CallOption) error {
	c.calls++
	return nil
}

func (c *conn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	c.calls++
	return nil, nil
}

func TestConnRefusesBeforeSending(t *testing.T) {
	inner := &conn{}
	ks := keystorev1.NewKeystoreServiceClient(protocheck.Conn(inner))
	_, err := ks.GetKey(t.Context(), &keystorev1.GetKeyRequest{Workspace: "acme", Key: "\xff"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Zero(t, inner.calls)
	_, err = ks.GetKey(t.Context(), &keystorev1.GetKeyRequest{Workspace: "acme", Key: "k1"})
	require.NoError(t, err)
	require.Equal(t, 1, inner.calls)
}
