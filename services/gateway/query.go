package gateway

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// strictQuery is grpc-gateway's query parser, except that a parameter that
// names no field of the request is refused (400 naming it) instead of
// silently ignored, as the JSON decoder refuses an unknown body field: a
// misspelt filter such as usage:series?from=2026-01-01 must not answer the
// default range as if it had been applied.
type strictQuery struct{ runtime.DefaultQueryParser }

func (q *strictQuery) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	desc := msg.ProtoReflect().Descriptor()
	for _, key := range slices.Sorted(maps.Keys(values)) {
		if !namesField(desc, key) {
			return fmt.Errorf("unknown query parameter %q; this call takes %s", key, queryFields(desc, filter))
		}
	}
	return q.DefaultQueryParser.Parse(msg, values, filter)
}

// mapKeyParam is how the default parser spells a map entry: labels[k]=v.
var mapKeyParam = regexp.MustCompile(`^(.*)\[(.*)\]$`)

// namesField reports whether key names a field of desc the way the default
// parser resolves it: proto or JSON names, dotted through singular
// messages, optionally with a [map key].
func namesField(desc protoreflect.MessageDescriptor, key string) bool {
	if m := mapKeyParam.FindStringSubmatch(key); m != nil {
		key = m[1]
	}
	parts := strings.Split(key, ".")
	for i, p := range parts {
		fields := desc.Fields()
		fd := fields.ByTextName(p)
		if fd == nil {
			fd = fields.ByJSONName(p)
		}
		if fd == nil {
			return false
		}
		if i == len(parts)-1 {
			return true
		}
		if fd.Message() == nil || fd.Cardinality() == protoreflect.Repeated {
			return false
		}
		desc = fd.Message()
	}
	return false
}

// queryFields lists, for an error message, the parameters a call takes:
// the request's fields not bound by the path or the body.
func queryFields(desc protoreflect.MessageDescriptor, filter *utilities.DoubleArray) string {
	var names []string
	fields := desc.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !filter.HasCommonPrefix([]string{string(fd.Name())}) {
			names = append(names, fd.JSONName())
		}
	}
	if len(names) == 0 {
		return "no query parameters"
	}
	return strings.Join(names, ", ")
}

var strictQueryOnce sync.Once

// useStrictQuery installs strictQuery. grpc-gateway keeps the query parser
// in a package variable, whatever ServeMux its option is given to, so it is
// set once, before any mux of ours serves.
func useStrictQuery() {
	strictQueryOnce.Do(func() { runtime.NewServeMux(runtime.SetQueryParameterParser(&strictQuery{})) })
}
