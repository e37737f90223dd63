package main

import (
	"crypto/tls"
	"crypto/x509"
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
	cli, err := clientTLS(c.TLSCert, c.TLSKey, c.TLSCA)
	if err != nil {
		return transport{}, fmt.Errorf("tls: %w", err)
	}
	srv := &tls.Config{Certificates: cli.Certificates, MinVersion: tls.VersionTLS12}
	if cli.RootCAs != nil {
		// Services present their certificates to each other (mutual TLS);
		// callers without one still reach the API with a bearer credential.
		srv.ClientCAs = cli.RootCAs
		srv.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return transport{server: credentials.NewTLS(srv), client: credentials.NewTLS(cli), secure: true}, nil
}

// clientTLS is the client side of one TLS link (gRPC between services, the
// roles to etcd): an optional certificate to present and an optional CA to
// verify the server with (default: the system's roots).
func clientTLS(cert, key, ca string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("load certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("read CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", ca)
		}
	}
	return cfg, nil
}

// etcdClientTLS is how the roles dial etcd: nil (plaintext) unless a CA or a
// client certificate is set.
func etcdClientTLS(c Config) (*tls.Config, error) {
	if c.EtcdCA == "" && c.EtcdCert == "" {
		return nil, nil
	}
	cfg, err := clientTLS(c.EtcdCert, c.EtcdKey, c.EtcdCA)
	if err != nil {
		return nil, fmt.Errorf("etcd tls: %w", err)
	}
	return cfg, nil
}
