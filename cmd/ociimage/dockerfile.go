package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// checkDockerfile keeps the Dockerfile's final stage producing the image this
// program writes: the same user, entrypoint, command, ports and environment.
// The Dockerfile cannot be built here (no Docker engine), so its text is
// what can be held to the image.
func checkDockerfile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	var got imageConfig
	got.ExposedPorts = map[string]struct{}{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		instr, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch strings.ToUpper(instr) {
		case "FROM": // a new stage: only the last one counts
			got = imageConfig{ExposedPorts: map[string]struct{}{}}
		case "USER":
			got.User = arg
		case "ENV":
			got.Env = append(got.Env, strings.Fields(arg)...)
		case "EXPOSE":
			for _, p := range strings.Fields(arg) {
				got.ExposedPorts[p+"/tcp"] = struct{}{}
			}
		case "ENTRYPOINT":
			err = json.Unmarshal([]byte(arg), &got.Entrypoint)
		case "CMD":
			err = json.Unmarshal([]byte(arg), &got.Cmd)
		}
		if err != nil {
			return fmt.Errorf("%s: %s: want the JSON form: %w", name, instr, err)
		}
	}
	want := runConfig()
	switch {
	case got.User != want.User:
		return fmt.Errorf("%s: USER %s, the image has %s", name, got.User, want.User)
	case !slices.Equal(got.Entrypoint, want.Entrypoint) || !slices.Equal(got.Cmd, want.Cmd):
		return fmt.Errorf("%s: ENTRYPOINT %q CMD %q, the image has %q %q", name, got.Entrypoint, got.Cmd, want.Entrypoint, want.Cmd)
	case len(got.ExposedPorts) != len(want.ExposedPorts):
		return fmt.Errorf("%s: EXPOSE %d ports, the image %d (%v)", name, len(got.ExposedPorts), len(want.ExposedPorts), exposedPorts)
	case !slices.Equal(got.Env, want.Env):
		return fmt.Errorf("%s: ENV %q, the image has %q", name, got.Env, want.Env)
	}
	for p := range want.ExposedPorts {
		if _, ok := got.ExposedPorts[p]; !ok {
			return fmt.Errorf("%s: port %s not exposed", name, p)
		}
	}
	return sc.Err()
}
