package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// transport holds the TLS material for gRPC between services. Without a
// certificate, everything is plaintext (loopback, or a mesh that encrypts).
type transport struct {
	server credentials.TransportCredentials // nil: plaintext
	client credentials.TransportCredentials
	secure bool
}

func loadTransport(c Config) (transport, error) {
	if c.TLSCert == "" {
		return transport{client: insecure.NewCredentials()}, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return transport{}, fmt.Errorf("tls: load certificate: %w", err)
	}
	var pool *x509.CertPool
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return transport{}, fmt.Errorf("tls: read CA: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return transport{}, errors.New("tls: the CA file holds no PEM certificate")
		}
	}
	srv := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if pool != nil {
		// Services present their certificates to each other (mutual TLS);
		// callers without one still reach the API with a bearer credential.
		srv.ClientCAs = pool
		srv.ClientAuth = tls.VerifyClientCertIfGiven
	}
	cli := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	return transport{server: credentials.NewTLS(srv), client: credentials.NewTLS(cli), secure: true}, nil
}
