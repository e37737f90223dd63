package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
)

// checkArchive reads an archive back as a registry or runtime would, checks
// every digest and what the image promises (non-root numeric user,
// entrypoint, ports, no shell, a static binary), and extracts the binary to
// extract for the smoke test.
func checkArchive(archive, extract string) error {
	files, err := readTar(archive)
	if err != nil {
		return err
	}
	var idx index
	if err := decodeBlob(files, "index.json", "", &idx); err != nil {
		return err
	}
	if len(idx.Manifests) != 1 {
		return fmt.Errorf("index.json: want 1 manifest, got %d", len(idx.Manifests))
	}
	var man manifest
	if err := decodeBlob(files, blobPath(idx.Manifests[0]), idx.Manifests[0].Digest, &man); err != nil {
		return err
	}
	var cfg configFile
	if err := decodeBlob(files, blobPath(man.Config), man.Config.Digest, &cfg); err != nil {
		return err
	}
	if err := checkConfig(cfg); err != nil {
		return err
	}
	if len(man.Layers) != 1 || man.Layers[0].MediaType != mediaLayer {
		return errors.New("manifest: want one gzipped layer")
	}
	gz, err := blob(files, blobPath(man.Layers[0]), man.Layers[0].Digest)
	if err != nil {
		return err
	}
	return checkLayer(gz, cfg.RootFS.DiffIDs, extract)
}

func checkConfig(cfg configFile) error {
	c := cfg.Config
	uid, _, _ := strings.Cut(c.User, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		// Kubernetes' runAsNonRoot can only verify a numeric, non-zero user.
		return fmt.Errorf("config: user %q is not a numeric non-root uid", c.User)
	}
	if !slices.Equal(c.Entrypoint, entrypoint) {
		return fmt.Errorf("config: entrypoint %q, want %q", c.Entrypoint, entrypoint)
	}
	for _, p := range exposedPorts {
		if _, ok := c.ExposedPorts[p]; !ok {
			return fmt.Errorf("config: port %s not exposed", p)
		}
	}
	if cfg.OS != "linux" || len(cfg.RootFS.DiffIDs) != 1 {
		return fmt.Errorf("config: os %q with %d layers, want linux with 1", cfg.OS, len(cfg.RootFS.DiffIDs))
	}
	return nil
}

// shells are what an image without a shell must not hold.
var shells = []string{"sh", "bash", "dash", "ash", "busybox", "zsh"}

func checkLayer(gz []byte, diffIDs []string, extract string) error {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	raw := sha256.New()
	tr := tar.NewReader(io.TeeReader(zr, raw))
	var found bool
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("layer: %w", err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if slices.Contains(shells, path.Base(name)) {
			return fmt.Errorf("layer: %s is a shell", name)
		}
		if name == binaryPath {
			found = true
			if err := extractStatic(tr, extract); err != nil {
				return err
			}
		}
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(raw.Sum(nil)); got != diffIDs[0] {
		return fmt.Errorf("layer: diff_id %s, config says %s", got, diffIDs[0])
	}
	if !found {
		return fmt.Errorf("layer: no /%s", binaryPath)
	}
	return nil
}

// extractStatic writes the binary out and checks that it needs no dynamic
// loader or shared library: the image has none.
func extractStatic(r io.Reader, out string) error {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	ef, err := elf.Open(out)
	if err != nil {
		return fmt.Errorf("/%s: %w", binaryPath, err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("/%s is dynamically linked (build it with CGO_ENABLED=0)", binaryPath)
		}
	}
	return nil
}

func readTar(name string) (map[string][]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if files[h.Name], err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		}
	}
}

// blob returns a file of the archive, checked against its digest when one
// is given.
func blob(files map[string][]byte, name, digest string) ([]byte, error) {
	b, ok := files[name]
	if !ok {
		return nil, fmt.Errorf("archive: no %s", name)
	}
	if digest != "" {
		if sum := sha256.Sum256(b); "sha256:"+hex.EncodeToString(sum[:]) != digest {
			return nil, fmt.Errorf("archive: %s does not match its digest", name)
		}
	}
	return b, nil
}

func decodeBlob(files map[string][]byte, name, digest string, v any) error {
	b, err := blob(files, name, digest)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
