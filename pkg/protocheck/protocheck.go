// Package protocheck validates outgoing gRPC requests before they are
// marshaled, so that a request that cannot be sent is refused with
// INVALID_ARGUMENT naming its field instead of the INTERNAL error gRPC
// gives when marshaling fails.
//
// The one such rule today: proto3 string fields must hold valid UTF-8.
// grpc-go refuses to marshal a request that breaks it, so the call never
// reaches a server, and the caller (the REST gateway turning a %FF in a path
// or query into a string, or a Go program) would get INTERNAL.
package protocheck

import (
	"context"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Check returns an INVALID_ARGUMENT status naming the first field of m
// (by its proto name, e.g. "page_token" or "update_mask.paths[0]") that
// holds a string protobuf refuses to marshal, or nil.
func Check(m proto.Message) error {
	if m == nil {
		return nil
	}
	if field := invalidUTF8(m.ProtoReflect(), ""); field != "" {
		return status.Error(codes.InvalidArgument, field+": must be valid UTF-8 text")
	}
	return nil
}

// UnaryClientInterceptor checks every request with Check before sending it.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if m, ok := req.(proto.Message); ok {
			if err := Check(m); err != nil {
				return err
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// StreamClientInterceptor checks every message a stream sends with Check.
func StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return checkedStream{s}, nil
	}
}

// Conn wraps a connection so that every call it makes is checked, for
// code given a grpc.ClientConnInterface rather than dialing itself.
func Conn(cc grpc.ClientConnInterface) grpc.ClientConnInterface { return checkedConn{cc} }

type checkedConn struct{ grpc.ClientConnInterface }

func (c checkedConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if m, ok := args.(proto.Message); ok {
		if err := Check(m); err != nil {
			return err
		}
	}
	return c.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
}

func (c checkedConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := c.ClientConnInterface.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return nil, err
	}
	return checkedStream{s}, nil
}

type checkedStream struct{ grpc.ClientStream }

func (s checkedStream) SendMsg(m any) error {
	if pm, ok := m.(proto.Message); ok {
		if err := Check(pm); err != nil {
			return err
		}
	}
	return s.ClientStream.SendMsg(m)
}

// invalidUTF8 returns the path of the first string field of m, under
// prefix, that protobuf validates as UTF-8 and that is not; "" if none.
func invalidUTF8(m protoreflect.Message, prefix string) string {
	var bad string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := prefix + string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && bad == ""; i++ {
				bad = invalidValue(fd, l.Get(i), name+"["+strconv.Itoa(i)+"]")
			}
		case fd.IsMap():
			kd, vd := fd.MapKey(), fd.MapValue()
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if kd.Kind() == protoreflect.StringKind && enforced(kd) && !utf8.ValidString(k.String()) {
					bad = name + " (a key)"
					return false
				}
				bad = invalidValue(vd, mv, name+"["+strconv.Quote(k.String())+"]")
				return bad == ""
			})
		default:
			bad = invalidValue(fd, v, name)
		}
		return bad == ""
	})
	return bad
}

func invalidValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, name string) string {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if enforced(fd) && !utf8.ValidString(v.String()) {
			return name
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return invalidUTF8(v.Message(), name+".")
	}
	return ""
}

// enforced reports whether protobuf validates fd's strings as UTF-8: proto3
// always, editions unless the field's features say otherwise (the rule of
// google.golang.org/protobuf/internal/strs.EnforceUTF8).
func enforced(fd protoreflect.FieldDescriptor) bool {
	switch fd.Syntax() {
	case protoreflect.Proto3:
		return true
	case protoreflect.Editions:
		if f, ok := fd.(interface{ EnforceUTF8() bool }); ok {
			return f.EnforceUTF8()
		}
		return true
	}
	return false
}
