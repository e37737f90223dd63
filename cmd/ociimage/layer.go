package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// layer is the image's only layer, gzipped, with the digests the manifest
// (compressed) and the config (uncompressed, diff_id) name it by.
type layer struct {
	gz     []byte
	diffID string
}

func buildLayer(es []entry) (layer, error) {
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return layer{}, err
	}
	raw := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, raw))
	for _, e := range es {
		if err := addEntry(tw, e); err != nil {
			return layer{}, fmt.Errorf("%s: %w", e.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return layer{}, err
	}
	if err := zw.Close(); err != nil {
		return layer{}, err
	}
	return layer{gz: gz.Bytes(), diffID: "sha256:" + hex.EncodeToString(raw.Sum(nil))}, nil
}

func addEntry(tw *tar.Writer, e entry) error {
	h := &tar.Header{
		Name: e.path, Mode: int64(e.mode.Perm()), Uid: e.uid, Gid: e.uid,
		ModTime: epoch, Format: tar.FormatPAX,
	}
	if e.mode&os.ModeSticky != 0 {
		h.Mode |= 0o1000
	}
	if e.mode.IsDir() {
		h.Typeflag, h.Name = tar.TypeDir, e.path+"/"
		return tw.WriteHeader(h)
	}
	body, err := e.content()
	if err != nil {
		return err
	}
	h.Typeflag, h.Size = tar.TypeReg, int64(len(body))
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err = tw.Write(body)
	return err
}

func (e entry) content() ([]byte, error) {
	if e.from == "" {
		return []byte(e.body), nil
	}
	return os.ReadFile(e.from)
}

// writeRootfs writes the same entries as a directory, for the Dockerfile to
// COPY into an empty image (ownership is set there with --chown).
func writeRootfs(dir string, es []entry) error {
	for _, e := range es {
		p := filepath.Join(dir, filepath.FromSlash(e.path))
		if e.mode.IsDir() {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(p, e.mode); err != nil {
				return err
			}
			continue
		}
		body, err := e.content()
		if err != nil {
			return fmt.Errorf("%s: %w", e.path, err)
		}
		if err := os.WriteFile(p, body, e.mode.Perm()); err != nil {
			return err
		}
	}
	return nil
}
