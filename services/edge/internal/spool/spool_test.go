package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every test record is recLen bytes, so a frame is frameLen bytes and a
// segment of segOf3 bytes holds exactly three records.
const (
	recLen   = 9
	frameLen = 1 + 4 + recLen
	segOf3   = 3 * frameLen
)

func rec(i uint64) []byte { return []byte(fmt.Sprintf("rec-%05d", i)) }

// recs is rec(from) … rec(to).
func recs(from, to uint64) [][]byte {
	var out [][]byte
	for i := from; i <= to; i++ {
		out = append(out, rec(i))
	}
	return out
}

// open opens dir, shrinking its segments to segBytes when not 0, and
// closes it at the end of the test (a second Close is harmless).
func open(t *testing.T, dir string, segBytes int64) (*Spool, [][]byte) {
	t.Helper()
	s, replay, err := Open(dir)
	require.NoError(t, err)
	if segBytes > 0 {
		s.segBytes = segBytes
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, replay
}

// appendRange appends rec(from) … rec(to), checking each gets its own
// number as its sequence number.
func appendRange(t *testing.T, s *Spool, from, to uint64) {
	t.Helper()
	for i := from; i <= to; i++ {
		seq, err := s.Append(rec(i))
		require.NoError(t, err)
		require.Equal(t, i, seq)
	}
}

// reopen closes s and opens its directory again.
func reopen(t *testing.T, s *Spool, segBytes int64) (*Spool, [][]byte) {
	t.Helper()
	require.NoError(t, s.Close())
	s, replay := open(t, s.dir, segBytes)
	return s, replay
}

// firstReplayed is the sequence number of the first replayed record, as
// the edge computes it.
func firstReplayed(s *Spool, replay [][]byte) uint64 { return s.Next() - uint64(len(replay)) }

// segFiles lists the segment files in dir by the first sequence number
// in their names.
func segFiles(t *testing.T, dir string) []uint64 {
	t.Helper()
	segs, err := listSegments(dir)
	require.NoError(t, err)
	return segs
}

func frame(b []byte) []byte {
	out := binary.AppendUvarint(nil, uint64(len(b)))
	out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(b, castagnoli))
	return append(out, b...)
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(b)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Size()
}

func TestAppendNumbersFromOne(t *testing.T) {
	t.Parallel()
	s, replay := open(t, t.TempDir(), 0)
	require.Empty(t, replay)
	require.Equal(t, uint64(1), s.Next())
	appendRange(t, s, 1, 10)
	require.Equal(t, uint64(11), s.Next())
	require.Equal(t, []uint64{1}, segFiles(t, s.dir), "one segment, named after its first record")

	// What could not be read back is refused and takes no number.
	for _, b := range [][]byte{nil, {}, make([]byte, maxRecord+1)} {
		_, err := s.Append(b)
		require.ErrorContains(t, err, "a record must have 1 to")
	}
	_, err := s.Append(make([]byte, maxRecord))
	require.NoError(t, err)
	appendRange(t, s, 12, 12)
	s, replay = reopen(t, s, 0)
	require.Len(t, replay, 12)
	require.Len(t, replay[10], maxRecord)
	require.Equal(t, rec(12), replay[11])
}

// TestConcurrentAppend: concurrent Appends get distinct consecutive
// numbers, and each record is replayed at the number its Append returned
// (Sync and Ack run alongside).
func TestConcurrentAppend(t *testing.T) {
	t.Parallel()
	s, _ := open(t, t.TempDir(), 10*frameLen)
	const writers, each = 8, 50
	var mu sync.Mutex
	bySeq := map[uint64][]byte{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				b := []byte(fmt.Sprintf("w%d-%05d", w, i))
				seq, err := s.Append(b)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				bySeq[seq] = b
				mu.Unlock()
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if err := s.Sync(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	require.Len(t, bySeq, writers*each)
	// Acknowledge half, concurrently with more syncs.
	var ackErr, syncErr error
	wg.Go(func() { ackErr = s.Ack(writers * each / 2) })
	wg.Go(func() { syncErr = s.Sync() })
	wg.Wait()
	require.NoError(t, ackErr)
	require.NoError(t, syncErr)

	s, replay := reopen(t, s, 0)
	require.Equal(t, uint64(writers*each+1), s.Next())
	require.Len(t, replay, writers*each/2)
	first := firstReplayed(s, replay)
	require.Equal(t, uint64(writers*each/2+1), first)
	for i, b := range replay {
		require.Equal(t, bySeq[first+uint64(i)], b, "record %d", first+uint64(i))
	}
}

// TestReopenReplaysUnacknowledged: after a restart exactly the records
// above the acknowledged sequence number come back, oldest first, and
// numbering goes on where it stopped.
func TestReopenReplaysUnacknowledged(t *testing.T) {
	t.Parallel()
	for _, segBytes := range []int64{0, segOf3} {
		for _, ack := range []uint64{0, 1, 3, 5, 9, 10} {
			t.Run(fmt.Sprintf("seg=%d/ack=%d", segBytes, ack), func(t *testing.T) {
				t.Parallel()
				s, _ := open(t, t.TempDir(), segBytes)
				appendRange(t, s, 1, 10)
				require.NoError(t, s.Ack(ack))

				s, replay := reopen(t, s, segBytes)
				require.Equal(t, recs(ack+1, 10), replay)
				require.Equal(t, uint64(11), s.Next())
				require.Equal(t, ack+1, firstReplayed(s, replay))

				// Numbering continues, and the new record is replayed
				// after the old ones.
				appendRange(t, s, 11, 11)
				s, replay = reopen(t, s, segBytes)
				require.Equal(t, recs(ack+1, 11), replay)
				require.Equal(t, ack+1, firstReplayed(s, replay))
			})
		}
	}
}

// TestAckDeletesSegments: an acknowledgement survives a restart, and a
// segment is deleted once all its records are acknowledged (the last
// segment, which is appended to, stays).
func TestAckDeletesSegments(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, _ := open(t, dir, segOf3)
	appendRange(t, s, 1, 10)
	require.Equal(t, []uint64{1, 4, 7, 10}, segFiles(t, dir))

	for _, step := range []struct {
		ack       uint64
		wantFiles []uint64
		wantAcked uint64 // in the acked file
	}{
		{ack: 2, wantFiles: []uint64{1, 4, 7, 10}, wantAcked: 2},
		{ack: 3, wantFiles: []uint64{4, 7, 10}, wantAcked: 3},
		{ack: 1, wantFiles: []uint64{4, 7, 10}, wantAcked: 3}, // never backwards
		{ack: 5, wantFiles: []uint64{4, 7, 10}, wantAcked: 5},
		{ack: 6, wantFiles: []uint64{7, 10}, wantAcked: 6},
		{ack: 10, wantFiles: []uint64{10}, wantAcked: 10},
	} {
		require.NoError(t, s.Ack(step.ack), "ack %d", step.ack)
		require.NoError(t, s.Sync(), "acknowledgements are saved at the next sync")
		require.Equal(t, step.wantFiles, segFiles(t, dir), "ack %d", step.ack)
		acked, err := readUint(filepath.Join(dir, "acked"))
		require.NoError(t, err)
		require.Equal(t, step.wantAcked, acked, "ack %d", step.ack)

		var replay [][]byte
		s, replay = reopen(t, s, segOf3)
		require.Equal(t, recs(step.wantAcked+1, 10), replay, "ack %d", step.ack)
		require.Equal(t, uint64(11), s.Next())
		require.Equal(t, step.wantFiles, segFiles(t, dir), "reopen after ack %d", step.ack)
	}

	// Everything acknowledged: the next records still land in order.
	appendRange(t, s, 11, 13)
	require.NoError(t, s.Ack(12))
	s, replay := reopen(t, s, segOf3)
	require.Equal(t, recs(13, 13), replay)
	require.Equal(t, uint64(13), firstReplayed(s, replay))
	require.Equal(t, []uint64{13}, segFiles(t, dir))
}

func TestProducerKeptAcrossReopens(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, _ := open(t, dir, 0)
	p := s.Producer()
	require.Regexp(t, regexp.MustCompile(`^edge-[0-9a-f]{16}$`), p)
	b, err := os.ReadFile(filepath.Join(dir, "producer"))
	require.NoError(t, err)
	require.Equal(t, p+"\n", string(b))
	appendRange(t, s, 1, 3)

	for range 3 {
		s, _ = reopen(t, s, 0)
		require.Equal(t, p, s.Producer())
	}
	other, _ := open(t, t.TempDir(), 0)
	require.NotEqual(t, p, other.Producer(), "each spool its own producer")

	// A producer file an operator left empty is refused, not replaced: a
	// new id would make the ledger count replayed records again.
	require.NoError(t, s.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "producer"), []byte("\n"), 0o600))
	_, _, err = Open(dir)
	require.ErrorContains(t, err, "is empty")
}

// TestTornTail: a crash may leave the last record of the last segment
// cut short or followed by bytes that are no record. Reopening drops
// them (the file is cut back to its whole records), replays the whole
// records, and appending goes on from there.
func TestTornTail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		segBytes int64
		// n records are appended; tear then changes the last segment.
		n    uint64
		tear func(t *testing.T, path string)
		// wantKept is how many of the n records survive.
		wantKept uint64
	}{
		{name: "cut in the payload", n: 5, wantKept: 4, tear: cut(3)},
		{name: "cut in the checksum", n: 5, wantKept: 4, tear: cut(recLen + 2)},
		{name: "only the length left", n: 5, wantKept: 4, tear: cut(frameLen - 1)},
		{name: "garbage appended", n: 5, wantKept: 5, tear: add([]byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02})},
		{name: "length over the limit appended", n: 5, wantKept: 5, tear: add(binary.AppendUvarint(nil, maxRecord+1))},
		{name: "record with a bad checksum appended", n: 5, wantKept: 5, tear: add(badCRC(frame(rec(99))))},
		{name: "half a record appended", n: 5, wantKept: 5, tear: add(frame(rec(99))[:7])},
		// A file extended by a crash of the machine may read as zeros.
		{name: "zeros appended", n: 5, wantKept: 5, tear: add(make([]byte, 64))},
		{name: "last of several segments cut", segBytes: segOf3, n: 8, wantKept: 7, tear: cut(1)},
		{name: "last segment cut to nothing", segBytes: segOf3, n: 7, wantKept: 6, tear: cut(frameLen)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s, _ := open(t, dir, tc.segBytes)
			appendRange(t, s, 1, tc.n)
			require.NoError(t, s.Close())
			segs := segFiles(t, dir)
			last := s.segPath(segs[len(segs)-1])
			tc.tear(t, last)

			s, replay := open(t, dir, tc.segBytes)
			require.Equal(t, recs(1, tc.wantKept), replay)
			require.Equal(t, tc.wantKept+1, s.Next())
			require.Equal(t, uint64(1), firstReplayed(s, replay))
			require.Equal(t, int64(tc.wantKept-(segs[len(segs)-1]-1))*frameLen, fileSize(t, last), "the torn tail is cut off")

			// Appending goes on at the next number, and reads back.
			appendRange(t, s, tc.wantKept+1, tc.wantKept+2)
			s, replay = reopen(t, s, tc.segBytes)
			require.Equal(t, recs(1, tc.wantKept+2), replay)
			require.Equal(t, uint64(1), firstReplayed(s, replay))
		})
	}
}

// cut removes the last n bytes of a file.
func cut(n int64) func(*testing.T, string) {
	return func(t *testing.T, path string) {
		require.NoError(t, os.Truncate(path, fileSize(t, path)-n))
	}
}

// add appends b to a file.
func add(b []byte) func(*testing.T, string) {
	return func(t *testing.T, path string) { appendFile(t, path, b) }
}

func badCRC(f []byte) []byte {
	f = bytes.Clone(f)
	f[1] ^= 0xff
	return f
}

// corrupt flips a payload byte of record i (1-based) of a segment of
// fixed-size test records starting at first.
func corrupt(t *testing.T, path string, first, i uint64) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[(i-first)*frameLen+5] ^= 0xff
	require.NoError(t, os.WriteFile(path, b, 0o600))
}

// TestCorruptRecordInLastSegment: reading stops at a record whose
// checksum fails, as at a torn tail: it and every record after it in the
// segment are not replayed, and the segment is cut there. The spool
// cannot tell corruption from a crash's leftovers. Numbering goes on
// after the last record kept or the acknowledged one, whichever is
// higher, so the dropped records' numbers are given again only when the
// ledger never acknowledged them; if it held them without the acked file
// knowing (the acknowledgement not yet saved), the ledger would take the
// new records for those duplicates. Corruption needs the disk or the
// machine to fail: killing the process cannot cause it.
func TestCorruptRecordInLastSegment(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		ack        uint64
		wantReplay [][]byte
		wantNext   uint64
		wantFiles  []uint64 // after reopening
	}{
		{name: "unacknowledged", ack: 0, wantReplay: recs(1, 2), wantNext: 3, wantFiles: []uint64{1}},
		{name: "acknowledged up to before it", ack: 2, wantReplay: nil, wantNext: 3, wantFiles: []uint64{1}},
		// The acknowledgement is ahead of what the segment still holds:
		// numbering follows the acknowledgement, and new records go to a
		// new segment named by their numbers (appended to the old one,
		// they would be read back as the lost records' numbers, all
		// acknowledged, and never replayed). The old one, all
		// acknowledged, goes.
		{name: "acknowledged past it", ack: 4, wantReplay: nil, wantNext: 5, wantFiles: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s, _ := open(t, dir, 0)
			appendRange(t, s, 1, 5)
			require.NoError(t, s.Ack(tc.ack))
			require.NoError(t, s.Close())
			corrupt(t, s.segPath(1), 1, 3)

			s, replay := open(t, dir, 0)
			require.Equal(t, tc.wantReplay, replay)
			require.Equal(t, tc.wantNext, s.Next())
			require.Equal(t, tc.wantFiles, segFiles(t, dir))
			if slices.Contains(tc.wantFiles, 1) {
				require.Equal(t, int64(2*frameLen), fileSize(t, s.segPath(1)), "cut at the corrupt record")
			}

			// New records are numbered on and read back at their numbers.
			appendRange(t, s, tc.wantNext, tc.wantNext+1)
			s, replay = reopen(t, s, 0)
			want := append(slices.Clone(tc.wantReplay), rec(tc.wantNext), rec(tc.wantNext+1))
			require.Equal(t, want, replay)
			require.Equal(t, tc.wantNext+2, s.Next())
			require.Equal(t, tc.wantNext+2-uint64(len(want)), firstReplayed(s, replay))
		})
	}
}

// TestCorruptRecordInEarlierSegment: a record lost inside a segment that
// is not the last leaves a hole in the numbering; Open refuses the spool
// rather than replay the records after the hole under wrong numbers.
func TestCorruptRecordInEarlierSegment(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, _ := open(t, dir, segOf3)
	appendRange(t, s, 1, 8)
	require.NoError(t, s.Close())
	require.Equal(t, []uint64{1, 4, 7}, segFiles(t, dir))
	corrupt(t, s.segPath(4), 4, 5)

	_, _, err := Open(dir)
	require.ErrorContains(t, err, "do not follow the acknowledged sequence")

	// Once the ledger acknowledged that segment, it is no longer read.
	require.NoError(t, writeFileAtomic(filepath.Join(dir, "acked"), []byte("6\n")))
	s, replay := open(t, dir, segOf3)
	require.Equal(t, recs(7, 8), replay)
	require.Equal(t, uint64(7), firstReplayed(s, replay))
}

func TestSecondOpenFails(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, _ := open(t, dir, 0)
	appendRange(t, s, 1, 2)

	_, _, err := Open(dir)
	require.Error(t, err)
	require.ErrorContains(t, err, dir+" is in use by another process")

	// The failed Open changed nothing, and the lock goes with Close.
	appendRange(t, s, 3, 3)
	s, replay := reopen(t, s, 0)
	require.Equal(t, recs(1, 3), replay)
	require.Equal(t, uint64(4), s.Next())
}

// TestEmptyLastSegment: a crash between creating a segment and writing
// its first record leaves it empty.
func TestEmptyLastSegment(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		n    uint64 // records appended before
		ack  uint64
		// empty is the first sequence number of the empty segment left.
		empty      uint64
		wantReplay [][]byte
		wantFiles  []uint64 // after reopening
	}{
		{name: "the only segment", n: 0, empty: 1, wantReplay: nil, wantFiles: []uint64{1}},
		{name: "after a full one", n: 3, empty: 4, wantReplay: recs(1, 3), wantFiles: []uint64{1, 4}},
		{name: "after acknowledged ones", n: 6, ack: 6, empty: 7, wantReplay: nil, wantFiles: []uint64{7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s, _ := open(t, dir, segOf3)
			appendRange(t, s, 1, tc.n)
			require.NoError(t, s.Ack(tc.ack))
			require.NoError(t, s.Close())
			require.NoError(t, os.WriteFile(s.segPath(tc.empty), nil, 0o600))

			s, replay := open(t, dir, segOf3)
			require.Equal(t, tc.wantReplay, replay)
			require.Equal(t, tc.empty, s.Next())
			require.Equal(t, tc.wantFiles, segFiles(t, dir))

			// The empty segment is the one appended to.
			appendRange(t, s, tc.empty, tc.empty)
			require.Equal(t, tc.wantFiles, segFiles(t, dir))
			require.Equal(t, int64(frameLen), fileSize(t, s.segPath(tc.empty)))
			s, replay = reopen(t, s, segOf3)
			require.Equal(t, append(slices.Clone(tc.wantReplay), rec(tc.empty)), replay)
			require.Equal(t, tc.empty+1, s.Next())
		})
	}
}

// TestUnexpectedFile: a file that looks like a segment but is not named
// by a number is refused, not ignored.
func TestUnexpectedFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "x.seg"), nil, 0o600))
	_, _, err := Open(dir)
	require.ErrorContains(t, err, "unexpected file x.seg")
}

// FuzzReadSegment: whatever a segment file holds, reading it does not
// panic, and what it returns is exactly the whole records at its start:
// re-encoded, they are the first size bytes of the file.
func FuzzReadSegment(f *testing.F) {
	var valid []byte
	for i := range uint64(4) {
		valid = append(valid, frame(rec(i))...)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(append(slices.Clone(valid), 0, 0, 0, 0, 0, 0))
	f.Add(append(slices.Clone(valid), badCRC(frame(rec(9)))...))
	f.Add(binary.AppendUvarint(nil, maxRecord+1))
	f.Add(binary.AppendUvarint(nil, 1<<63))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add(frame([]byte("x")))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "00000000000000000001.seg")
		require.NoError(t, os.WriteFile(path, data, 0o600))
		rs, size, err := readSegment(path)
		require.NoError(t, err)
		require.GreaterOrEqual(t, size, int64(0))
		require.LessOrEqual(t, size, int64(len(data)))
		var re []byte
		for _, r := range rs {
			require.NotEmpty(t, r, "no record is empty")
			require.LessOrEqual(t, len(r), maxRecord)
			re = append(re, frame(r)...)
		}
		require.Equal(t, string(data[:size]), string(re))
	})
}

// TestBytes: the spool reports the disk its segments take, which shrinks
// as acknowledged segments go.
func TestBytes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, _ := open(t, dir, segOf3)
	require.Zero(t, s.Bytes())
	appendRange(t, s, 1, 6)
	full := s.Bytes()
	require.Positive(t, full)
	var onDisk int64
	for _, first := range segFiles(t, dir) {
		fi, err := os.Stat(s.segPath(first))
		require.NoError(t, err)
		onDisk += fi.Size()
	}
	require.Equal(t, onDisk, full)
	require.NoError(t, s.Ack(3)) // the first segment (1-3) goes at the next sync
	require.Equal(t, full, s.Bytes())
	require.NoError(t, s.Sync())
	require.Less(t, s.Bytes(), full)
}
