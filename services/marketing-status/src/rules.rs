//! The marketing status rules, free of I/O.
//!
//! - non-marketing → marketing takes effect at once and counts from that moment;
//! - marketing → non-marketing waits for the next update date: the contact stays marketing,
//!   keeps counting and carries the "marketing until next update" flag;
//! - asking for marketing again before that date clears the flag;
//! - at the update date every flagged contact becomes non-marketing.
//!
//! Every transition reports how the account's counts move, so storage changes the contact and
//! the counters in one transaction.

/// Status in effect now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Marketing,
    NonMarketing,
}

/// A contact's status and its pending flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub status: Status,
    /// Marketing now, non-marketing at the next update date.
    pub until_next_update: bool,
}

impl State {
    pub const MARKETING: State = State { status: Status::Marketing, until_next_update: false };
    pub const PENDING: State = State { status: Status::Marketing, until_next_update: true };
    pub const NON_MARKETING: State = State { status: Status::NonMarketing, until_next_update: false };

    /// Counts toward the tier (pending contacts still do).
    pub fn counts(&self) -> bool {
        self.status == Status::Marketing
    }

    /// May receive marketing tools (marketing email, ad audiences). Sales, transactional,
    /// ticket and feedback email are open to every contact and never asked here.
    pub fn may_receive_marketing(&self) -> bool {
        self.status == Status::Marketing
    }
}

/// How the account's counts move. `marketing` includes pending contacts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountDelta {
    pub marketing: i64,
    pub pending: i64,
    pub non_marketing: i64,
}

impl CountDelta {
    pub fn is_zero(&self) -> bool {
        *self == CountDelta::default()
    }

    fn of(s: State) -> CountDelta {
        CountDelta {
            marketing: i64::from(s.counts()),
            pending: i64::from(s.until_next_update),
            non_marketing: i64::from(!s.counts()),
        }
    }

    /// The delta of moving one contact from `from` to `to`.
    pub fn between(from: State, to: State) -> CountDelta {
        let (a, b) = (Self::of(from), Self::of(to));
        CountDelta {
            marketing: b.marketing - a.marketing,
            pending: b.pending - a.pending,
            non_marketing: b.non_marketing - a.non_marketing,
        }
    }

    /// The delta of a new contact in `state`.
    pub fn added(state: State) -> CountDelta {
        Self::of(state)
    }

    /// The delta of removing a contact in `state` (a delete frees its place at once).
    pub fn removed(state: State) -> CountDelta {
        let d = Self::of(state);
        CountDelta { marketing: -d.marketing, pending: -d.pending, non_marketing: -d.non_marketing }
    }
}

/// Deltas of several contacts in one write add up to the write's delta.
impl std::ops::AddAssign for CountDelta {
    fn add_assign(&mut self, d: CountDelta) {
        self.marketing += d.marketing;
        self.pending += d.pending;
        self.non_marketing += d.non_marketing;
    }
}

/// What a status request did to one contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Non-marketing → marketing, at once.
    BecameMarketing,
    /// The pending non-marketing request was withdrawn.
    PendingCleared,
    /// Still marketing; non-marketing at the next update date.
    PendingSet,
    Unchanged,
}

/// Applies a request for `requested` to a contact in `state`.
pub fn request(state: State, requested: Status) -> (State, Outcome) {
    match (requested, state.status, state.until_next_update) {
        (Status::Marketing, Status::NonMarketing, _) => (State::MARKETING, Outcome::BecameMarketing),
        (Status::Marketing, Status::Marketing, true) => (State::MARKETING, Outcome::PendingCleared),
        (Status::NonMarketing, Status::Marketing, false) => (State::PENDING, Outcome::PendingSet),
        _ => (state, Outcome::Unchanged),
    }
}

/// The state after an update date: a pending contact becomes non-marketing; others stay.
pub fn at_update_date(state: State) -> State {
    if state.until_next_update { State::NON_MARKETING } else { state }
}

/// The merged contact is marketing if either was. A pending flag survives only when no side is
/// plainly marketing.
pub fn merged(primary: State, secondary: State) -> State {
    if primary == State::MARKETING || secondary == State::MARKETING {
        State::MARKETING
    } else if primary.counts() || secondary.counts() {
        State::PENDING
    } else {
        State::NON_MARKETING
    }
}

/// Where a new contact came from, as far as its default status goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CreationSource {
    Form,
    Import,
    Chatflow,
    Integration,
    Ads,
    /// Created by hand by a user.
    User,
    SalesExtension,
    LoggedEmail,
    MeetingLink,
    MobileApp,
    Workflow,
    Merge,
    System,
}

/// A source's built-in default and whether an account may change it.
pub fn builtin_default(source: CreationSource) -> (Status, bool) {
    use CreationSource::*;
    match source {
        Form | Ads => (Status::Marketing, true),
        Import | Chatflow | Integration => (Status::NonMarketing, true),
        // A user chooses; without a choice the contact is non-marketing.
        User => (Status::NonMarketing, false),
        SalesExtension | LoggedEmail | MeetingLink | MobileApp => (Status::NonMarketing, false),
        Workflow | Merge | System => (Status::NonMarketing, false),
    }
}

/// The status a new contact starts with: what its creator asked for where the source lets the
/// creator choose (users, imports "set as marketing", integrations, forms), otherwise the
/// account's default for the source (its custom one where allowed).
pub fn initial_status(
    source: CreationSource,
    requested: Option<Status>,
    account_default: Option<Status>,
) -> Status {
    use CreationSource::*;
    let (builtin, customizable) = builtin_default(source);
    let default = if customizable { account_default.unwrap_or(builtin) } else { builtin };
    match (source, requested) {
        (User | Import | Integration | Form | Ads | Chatflow, Some(asked)) => asked,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_rules() {
        use Outcome::*;
        let table = [
            (State::NON_MARKETING, Status::Marketing, State::MARKETING, BecameMarketing),
            (State::MARKETING, Status::NonMarketing, State::PENDING, PendingSet),
            (State::PENDING, Status::Marketing, State::MARKETING, PendingCleared),
            (State::PENDING, Status::NonMarketing, State::PENDING, Unchanged),
            (State::MARKETING, Status::Marketing, State::MARKETING, Unchanged),
            (State::NON_MARKETING, Status::NonMarketing, State::NON_MARKETING, Unchanged),
        ];
        for (from, asked, to, outcome) in table {
            assert_eq!(request(from, asked), (to, outcome), "{from:?} asked {asked:?}");
        }
    }

    #[test]
    fn counts_move_only_when_marketing_starts_or_the_update_date_ends_it() {
        let zero = CountDelta::default();
        let (s, _) = request(State::NON_MARKETING, Status::Marketing);
        assert_eq!(
            CountDelta::between(State::NON_MARKETING, s),
            CountDelta { marketing: 1, pending: 0, non_marketing: -1 }
        );
        // Setting non-marketing does not lower the count before the update date.
        let (p, _) = request(State::MARKETING, Status::NonMarketing);
        let d = CountDelta::between(State::MARKETING, p);
        assert_eq!(d, CountDelta { marketing: 0, pending: 1, non_marketing: 0 });
        assert!(p.counts() && p.may_receive_marketing());
        // At the update date it does.
        let after = at_update_date(p);
        assert_eq!(after, State::NON_MARKETING);
        assert_eq!(
            CountDelta::between(p, after),
            CountDelta { marketing: -1, pending: -1, non_marketing: 1 }
        );
        assert!(!after.may_receive_marketing());
        // Update dates leave everyone else alone.
        assert_eq!(at_update_date(State::MARKETING), State::MARKETING);
        assert_eq!(CountDelta::between(State::MARKETING, at_update_date(State::MARKETING)), zero);
        // A delete frees the place at once.
        assert_eq!(
            CountDelta::removed(State::PENDING),
            CountDelta { marketing: -1, pending: -1, non_marketing: 0 }
        );
    }

    #[test]
    fn the_seeds_worked_example() {
        // Update date 1 May. Set marketing on 30 April: counts for May.
        let mut c = State::NON_MARKETING;
        c = request(c, Status::Marketing).0;
        assert!(c.counts());
        c = at_update_date(c); // 1 May
        assert!(c.counts(), "counted for the whole of May");
        // Set non-marketing on 15 May: still counts and may receive marketing until 1 June.
        c = request(c, Status::NonMarketing).0;
        assert!(c.counts() && c.may_receive_marketing() && c.until_next_update);
        c = at_update_date(c); // 1 June
        assert_eq!(c, State::NON_MARKETING);
        // It stays non-marketing until someone sets it marketing.
        assert_eq!(at_update_date(c), State::NON_MARKETING);
    }

    #[test]
    fn defaults_per_creation_source() {
        use CreationSource::*;
        use Status::*;
        // (source, requested, account default, expected)
        let table = [
            (Form, None, None, Marketing),
            (Form, None, Some(NonMarketing), NonMarketing),
            (Import, None, None, NonMarketing),
            (Import, Some(Marketing), None, Marketing), // "set as marketing"
            (Chatflow, None, None, NonMarketing),
            (Chatflow, None, Some(Marketing), Marketing),
            (Integration, None, None, NonMarketing),
            (Integration, Some(Marketing), None, Marketing),
            (Ads, None, None, Marketing),
            (User, None, None, NonMarketing),
            (User, Some(Marketing), None, Marketing),
            (User, None, Some(Marketing), NonMarketing), // not customizable
            (SalesExtension, None, Some(Marketing), NonMarketing),
            (SalesExtension, Some(Marketing), None, NonMarketing), // fixed
            (LoggedEmail, None, None, NonMarketing),
            (MeetingLink, None, None, NonMarketing),
            (MobileApp, None, None, NonMarketing),
        ];
        for (source, requested, account, want) in table {
            assert_eq!(
                initial_status(source, requested, account),
                want,
                "{source:?} {requested:?} {account:?}"
            );
        }
    }

    #[test]
    fn a_merge_is_marketing_if_either_side_was() {
        assert_eq!(merged(State::NON_MARKETING, State::MARKETING), State::MARKETING);
        assert_eq!(merged(State::PENDING, State::MARKETING), State::MARKETING);
        assert_eq!(merged(State::PENDING, State::NON_MARKETING), State::PENDING);
        assert_eq!(merged(State::NON_MARKETING, State::NON_MARKETING), State::NON_MARKETING);
    }

    #[test]
    fn the_deltas_of_a_writes_contacts_add_up() {
        let mut d = CountDelta::between(State::NON_MARKETING, State::MARKETING);
        d += CountDelta::between(State::MARKETING, State::PENDING);
        d += CountDelta::removed(State::NON_MARKETING);
        assert_eq!(d, CountDelta { marketing: 1, pending: 1, non_marketing: -2 });
    }
}
