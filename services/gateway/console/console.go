// Package console serves keygate's web console at /console/: the files that
// `make console` builds from web/console into dist/. They are committed and
// embedded, so every build of the binary carries the console, with or
// without node, and it works offline.
package console

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed dist
var dist embed.FS

// Prefix is where the gateway mounts the console.
const Prefix = "/console/"

// policy allows only the console's own files: no inline script or style,
// no other origin, no framing. connect-src 'self' is the REST gateway,
// which serves the console from the same listener.
const policy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the console under Prefix with its security headers: its
// files, its settings (config.json) and, with sso set, the code exchange
// of single sign-on (sso/token).
func Handler(sso *SSO) http.Handler {
	files, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // dist is embedded at build time: it is always there
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+Prefix, http.StripPrefix(Prefix, http.FileServerFS(files)))
	mux.HandleFunc("GET "+Prefix+"config.json", sso.config)
	mux.HandleFunc("POST "+Prefix+"sso/token", sso.token)
	return secure(mux)
}

// secure adds the headers every console answer carries. The credential the
// console holds is worth protecting from other pages: the CSP stops injected
// script, frame-ancestors clickjacking, nosniff content-type confusion, and
// no-referrer leaks of the console's URL.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", policy)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		// The files carry no version in their names: revalidate, so an
		// upgraded binary never serves a stale script to an open tab.
		h.Set("Cache-Control", "no-cache")
		next.ServeHTTP(w, r)
	})
}
