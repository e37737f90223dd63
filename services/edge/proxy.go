package edge

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	usagev1 "github.com/keygate/keygate/gen/keygate/usage/v1"
)

// maxUpstreamBody bounds a non-streamed provider answer held in memory.
const maxUpstreamBody = 64 << 20

// proxy sends the request upstream and answers the client.
func (c *call) proxy(ep *endpoint, p *parsed, body []byte) outcome {
	rt := c.rt
	failed := outcome{status: usagev1.RequestStatus_REQUEST_STATUS_UPSTREAM_ERROR, release: true}
	if rt.up.credErr != nil {
		c.s.log.Error("edge: provider credential missing", "provider", rt.provider, "err", rt.up.credErr)
		c.fail(upstreamError(http.StatusBadGateway, "The provider of model '"+rt.id+"' is not configured with a credential."))
		return failed
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.s.cfg.RequestTimeout)
	defer cancel()
	ureq, err := http.NewRequestWithContext(ctx, http.MethodPost, rt.up.base+ep.path, bytes.NewReader(body))
	if err != nil {
		c.fail(upstreamError(http.StatusBadGateway, "The provider of model '"+rt.id+"' has an invalid base URL."))
		return failed
	}
	ureq.Header = rt.up.header(c.r.Header, p.stream)
	resp, err := rt.up.client.Do(ureq)
	if err != nil {
		return c.upstreamFailed(ctx, err, failed)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return c.upstreamStatus(resp, failed)
	}
	if p.stream && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return c.stream(resp, ep.d, p)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	if err != nil {
		return c.upstreamFailed(ctx, err, failed)
	}
	out := outcome{status: usagev1.RequestStatus_REQUEST_STATUS_OK}
	var ok bool
	if out.used, ok = ep.d.usage(data); !ok {
		out.used = tokens{input: c.est.input, output: min(int64(len(data))/4, c.est.output)}
	}
	h := c.answerHeaders(resp.StatusCode, cmp.Or(resp.Header.Get("Content-Type"), "application/json"))
	h["Content-Length"] = []string{strconv.Itoa(len(data))}
	c.account(out)
	c.w.WriteHeader(resp.StatusCode)
	_, _ = c.w.Write(data)
	return out
}

// anthropicVersion is sent to an Anthropic provider when the client named
// none.
const anthropicVersion = "2023-06-01"

// header is the header of a request to the provider: a fresh one, so that
// nothing of the client's (its key, hop-by-hop headers) goes upstream but
// the API version and beta features an Anthropic client chose.
func (up *upstream) header(client http.Header, stream bool) http.Header {
	h := http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json"}}
	if stream {
		h["Accept"] = []string{"text/event-stream"}
	}
	if up.kinds != kindAnthropic {
		if up.apiKey != "" {
			h["Authorization"] = []string{"Bearer " + up.apiKey}
		}
		return h
	}
	h["Anthropic-Version"] = []string{cmp.Or(client.Get("Anthropic-Version"), anthropicVersion)}
	if beta := client.Values("Anthropic-Beta"); len(beta) > 0 {
		h["Anthropic-Beta"] = beta
	}
	if up.apiKey != "" {
		h["X-Api-Key"] = []string{up.apiKey}
	}
	return h
}

// upstreamFailed answers a transport failure: the client left, the
// deadline passed (504) or the provider could not be reached (502).
func (c *call) upstreamFailed(ctx context.Context, err error, failed outcome) outcome {
	rt := c.rt
	switch {
	case c.r.Context().Err() != nil:
		// The provider was asked and may bill the prompt: the request
		// counts, it is not released (which would let a client that
		// always hangs up escape its request limits).
		c.status, c.reason = 499, "client_cancelled"
		failed.status = usagev1.RequestStatus_REQUEST_STATUS_CLIENT_CANCELLED
		failed.release = false
		failed.used = tokens{input: c.est.input}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		c.fail(upstreamError(http.StatusGatewayTimeout,
			"The provider of model '"+rt.id+"' did not answer within "+c.s.cfg.RequestTimeout.String()+"."))
	default:
		c.s.log.Warn("edge: provider unreachable", "request_id", c.id, "provider", rt.provider, "err", err)
		c.fail(upstreamError(http.StatusBadGateway, "The provider of model '"+rt.id+"' could not be reached."))
	}
	return failed
}

// upstreamStatus answers a provider's error status. Its 4xx answers (bad
// parameters, its own rate limits) pass through; 5xx and credential
// failures become 502, since they are not the client's to fix.
func (c *call) upstreamStatus(resp *http.Response, failed outcome) outcome {
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode < 400 {
		c.s.log.Warn("edge: provider error", "request_id", c.id, "provider", c.rt.provider, "status", resp.StatusCode)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		c.fail(upstreamError(http.StatusBadGateway,
			"The provider of model '"+c.rt.id+"' answered with status "+strconv.Itoa(resp.StatusCode)+"."))
		return failed
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	c.answerHeaders(resp.StatusCode, cmp.Or(resp.Header.Get("Content-Type"), "application/json"))
	c.reason = "upstream_client_error"
	c.w.WriteHeader(resp.StatusCode)
	_, _ = c.w.Write(data)
	return failed
}
