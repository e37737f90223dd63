package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type configFile struct {
	Architecture string      `json:"architecture"`
	OS           string      `json:"os"`
	Created      string      `json:"created"`
	Config       imageConfig `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
	History []history `json:"history"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// dockerManifest lets `docker load` read the same archive (as `docker save`
// writes it since Docker 25); OCI tools read index.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// writeArchive writes an OCI image layout as a tar file (an "oci-archive").
func writeArchive(out, arch, tag string, l layer) error {
	cfg := configFile{Architecture: arch, OS: "linux", Created: epoch.Format("2006-01-02T15:04:05Z"), Config: runConfig()}
	cfg.RootFS.Type, cfg.RootFS.DiffIDs = "layers", []string{l.diffID}
	cfg.History = []history{{Created: cfg.Created, CreatedBy: "go run ./cmd/ociimage build"}}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	cfgDesc, layerDesc := blobDesc(mediaConfig, cfgJSON), blobDesc(mediaLayer, l.gz)
	man, err := json.Marshal(manifest{SchemaVersion: 2, MediaType: mediaManif, Config: cfgDesc, Layers: []descriptor{layerDesc}})
	if err != nil {
		return err
	}
	manDesc := blobDesc(mediaManif, man)
	manDesc.Platform = &platform{Architecture: arch, OS: "linux"}
	manDesc.Annotations = map[string]string{"org.opencontainers.image.ref.name": tag}
	idx, err := json.Marshal(index{SchemaVersion: 2, MediaType: mediaIndex, Manifests: []descriptor{manDesc}})
	if err != nil {
		return err
	}
	docker, err := json.Marshal([]dockerManifest{{Config: blobPath(cfgDesc), RepoTags: []string{tag}, Layers: []string{blobPath(layerDesc)}}})
	if err != nil {
		return err
	}
	return writeTar(out, []tarFile{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", idx},
		{"manifest.json", docker},
		{blobPath(cfgDesc), cfgJSON},
		{blobPath(layerDesc), l.gz},
		{blobPath(manDesc), man},
	})
}

func blobDesc(mediaType string, b []byte) descriptor {
	sum := sha256.Sum256(b)
	return descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

func blobPath(d descriptor) string { return path.Join("blobs", "sha256", d.Digest[len("sha256:"):]) }

type tarFile struct {
	name string
	body []byte
}

func writeTar(out string, files []tarFile) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
			f.Close()
			return err
		}
	}
	for _, tf := range files {
		h := &tar.Header{Name: tf.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(tf.body)), ModTime: epoch}
		if err := tw.WriteHeader(h); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(tf.body); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
