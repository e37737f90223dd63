// Package gateway serves the management APIs as REST (grpc-gateway) with the
// OpenAPI document at /openapi.json, and the web console at /console/. It holds no state: every call goes to
// the keystore and usage services over gRPC with the caller's credential.
package gateway

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
	"github.com/keygate/keygate/pkg/protocheck"
	"github.com/keygate/keygate/services/gateway/console"
)

//go:embed openapi.json
var openapi []byte

// Config of the REST gateway.
type Config struct {
	// Keystore and Usage are connections to those services.
	Keystore grpc.ClientConnInterface
	Usage    grpc.ClientConnInterface
	Logger   *slog.Logger
	// MaxBodyBytes caps request bodies; larger ones get 413. Default 1 MiB.
	MaxBodyBytes int64
	// MaxTimeout caps every call's deadline, whatever the client asks for
	// (Grpc-Timeout is ignored). Default 30s.
	MaxTimeout time.Duration
	// SSO is the console's single sign-on; nil or without an issuer, off.
	SSO *console.SSO
}

// New returns the gateway's HTTP handler.
func New(ctx context.Context, c Config) (http.Handler, error) {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxTimeout == 0 {
		c.MaxTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	useStrictQuery()
	mux := runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(noHeaders),
		runtime.WithOutgoingHeaderMatcher(noHeaders),
		runtime.WithErrorHandler(errorHandler),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}),
	)
	// A path segment or query value that is not UTF-8 (%FF) decodes into
	// a string gRPC refuses to marshal: checked before sending, it is a 400
	// naming the field instead of a 500.
	ks, us := protocheck.Conn(c.Keystore), protocheck.Conn(c.Usage)
	if err := keystorev1.RegisterKeystoreServiceHandlerClient(ctx, mux, keystorev1.NewKeystoreServiceClient(ks)); err != nil {
		return nil, fmt.Errorf("register keystore routes: %w", err)
	}
	if err := usagev1.RegisterUsageServiceHandlerClient(ctx, mux, usagev1.NewUsageServiceClient(us)); err != nil {
		return nil, fmt.Errorf("register usage routes: %w", err)
	}
	root := http.NewServeMux()
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"SERVING"}`)
	})
	root.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapi)
	})
	root.Handle("/v1/", limit(c.MaxBodyBytes, c.MaxTimeout, mux))
	root.Handle(console.Prefix, console.Handler(c.SSO))
	// A person who types the gateway's address lands in the console.
	for _, p := range []string{"/{$}", "/console"} {
		root.Handle("GET "+p, http.RedirectHandler(console.Prefix, http.StatusFound))
	}
	return root, nil
}

// noHeaders forwards no HTTP header as gRPC metadata: the caller is only
// what its Authorization credential proves (runtime forwards that one
// itself), never what a Grpc-Metadata-* header claims.
func noHeaders(string) (string, bool) { return "", false }

// limit reads the body up to max before decoding, so an oversized body is
// 413 and not a misleading decode error, and caps the call's deadline.
func limit(max int64, timeout time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Grpc-Timeout")
		if r.ContentLength > max {
			writeError(w, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "request body exceeds "+strconv.FormatInt(max, 10)+" bytes")
			return
		}
		if r.Body != nil {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					writeError(w, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "request body exceeds "+strconv.FormatInt(max, 10)+" bytes")
					return
				}
				writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "could not read request body")
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// httpStatus maps gRPC codes to the HTTP statuses REST users expect.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.FailedPrecondition:
		return http.StatusPreconditionFailed
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Canceled:
		return 499
	default:
		return http.StatusInternalServerError
	}
}

func errorHandler(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	s := status.Convert(err)
	msg := s.Message()
	if s.Code() == codes.Internal || s.Code() == codes.Unknown {
		msg = "internal error"
	}
	writeError(w, httpStatus(s.Code()), s.Code().String(), msg)
}

func routingErrorHandler(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, code int) {
	switch code {
	case http.StatusMethodNotAllowed:
		writeError(w, code, "METHOD_NOT_ALLOWED", "method not allowed on this path")
	default:
		writeError(w, http.StatusNotFound, "NOT_FOUND", "no such route")
	}
}

// writeError answers {"error":{"code":404,"status":"NOT_FOUND","message":"…"}},
// the shape of Google's JSON APIs.
func writeError(w http.ResponseWriter, httpCode int, st, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)
	b := make([]byte, 0, 64+len(msg))
	b = append(b, `{"error":{"code":`...)
	b = strconv.AppendInt(b, int64(httpCode), 10)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, canonical(st))
	b = append(b, `,"message":`...)
	b = appendJSONString(b, msg)
	b = append(b, "}}\n"...)
	_, _ = w.Write(b)
}

// appendJSONString appends s as a JSON string. Not strconv.Quote: its \x,
// \a and \U escapes are not JSON, and a message may quote what the caller
// sent.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// canonical turns "NotFound" (codes.Code.String) into "NOT_FOUND".
func canonical(s string) string {
	out := make([]byte, 0, len(s)+4)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 && s[i-1] >= 'a' && s[i-1] <= 'z' {
				out = append(out, '_')
			}
			out = append(out, c)
		} else if c >= 'a' && c <= 'z' {
			out = append(out, c-32)
		} else {
			out = append(out, c)
		}
	}
	return string(out)
}
