package activity

import "time"

// Throttle constants, as in the Rust SDK's throttle.rs and Temporal's SDKs.
const (
	// DefaultHeartbeatInterval is the throttle interval of an activity without a heartbeat timeout.
	DefaultHeartbeatInterval = 30 * time.Second
	// MaxHeartbeatInterval caps the throttle interval: heartbeats are never held back longer.
	MaxHeartbeatInterval = 60 * time.Second
	retryMin             = 200 * time.Millisecond
	retryMax             = 5 * time.Second
)

// HeartbeatInterval is the throttle interval for a heartbeat timeout: 0.8 × the timeout when one
// is set (never more than 60 s), else 30 s.
func HeartbeatInterval(heartbeatTimeout time.Duration) time.Duration {
	if heartbeatTimeout <= 0 {
		return DefaultHeartbeatInterval
	}
	return min(heartbeatTimeout*4/5, MaxHeartbeatInterval)
}

// backoff is the retry delay after n consecutive failures: 200 ms, 400 ms, … capped at 5 s.
func backoff(n int) time.Duration {
	exp := min(max(n-1, 0), 16)
	return min(retryMin<<exp, retryMax)
}

// pending heartbeat details: nil when nothing waits. liveness=true sends lastHeartbeatTime only.
type pending struct {
	details  []byte
	liveness bool
}

// throttle is a pure state machine deciding when heartbeat details go out; every method takes
// the time from its caller, so tests drive it with a fake clock. The first heartbeat goes at
// once, later ones at most once per interval (from the start of the last delivered send), the
// latest details win, failed sends are retried with backoff and given up after giveUpAfter.
type throttle struct {
	interval     time.Duration
	giveUpAfter  time.Duration // 0: never
	pending      *pending
	lastSent     time.Time
	retryAt      time.Time
	failures     int
	failingSince time.Time
}

func newThrottle(heartbeatTimeout time.Duration) *throttle {
	t := &throttle{interval: HeartbeatInterval(heartbeatTimeout)}
	if heartbeatTimeout > 0 {
		t.giveUpAfter = heartbeatTimeout
	}
	return t
}

// record replaces the pending details (the latest win); a liveness-only heartbeat does not
// replace pending details.
func (t *throttle) record(p pending) {
	if p.liveness && t.pending != nil {
		return
	}
	t.pending = &p
}

// due says when the pending details are due: ok=false when nothing is pending; a zero time means now.
func (t *throttle) due() (at time.Time, ok bool) {
	switch {
	case t.pending == nil:
		return time.Time{}, false
	case !t.retryAt.IsZero():
		return t.retryAt, true
	case !t.lastSent.IsZero():
		return t.lastSent.Add(t.interval), true
	default:
		return time.Time{}, true
	}
}

// takeDue returns the pending details when they are due at now.
func (t *throttle) takeDue(now time.Time) *pending {
	at, ok := t.due()
	if !ok || at.After(now) {
		return nil
	}
	return t.takePending()
}

// takePending returns the pending details regardless of the interval (the flush).
func (t *throttle) takePending() *pending {
	p := t.pending
	t.pending = nil
	return p
}

// delivered: the send that started at sentAt was accepted.
func (t *throttle) delivered(sentAt time.Time) {
	t.lastSent = sentAt
	t.retryAt = time.Time{}
	t.failures = 0
	t.failingSince = time.Time{}
}

// failed: the send of p that started at sentAt failed at now with a retryable error. It returns
// when to retry, or giveUp with how long the heartbeat has been undeliverable.
func (t *throttle) failed(p *pending, sentAt, now time.Time, retryAfter time.Duration) (retryAt time.Time, giveUp bool, undelivered time.Duration) {
	if t.pending == nil {
		t.pending = p
	}
	t.failures++
	if t.failingSince.IsZero() {
		t.failingSince = sentAt
	}
	wait := retryAfter
	if wait <= 0 {
		wait = backoff(t.failures)
	}
	at := now.Add(wait)
	if t.giveUpAfter > 0 {
		undelivered = now.Sub(t.failingSince)
		if undelivered >= t.giveUpAfter {
			t.retryAt = time.Time{}
			return time.Time{}, true, undelivered
		}
		// One last try right at the limit rather than after it.
		if limit := t.failingSince.Add(t.giveUpAfter); limit.Before(at) {
			at = limit
		}
	}
	t.retryAt = at
	return at, false, 0
}
