//! [`Term`] as a query parameter and a result column of PostgreSQL client
//! libraries, so a fencing token goes into SQL as it is
//! (`.bind(fence.term())`, `&fence.term()`): PostgreSQL `bigint`, with the
//! same order as the terms. Pure encodings behind opt-in features (`sqlx`,
//! `postgres-types`), which the regent backends turn on; nothing here knows
//! regent's protocol.

use crate::types::Term;

#[cfg(feature = "sqlx")]
mod sqlx_impls {
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
    use sqlx::{Decode, Encode, Postgres, Type};

    use super::Term;

    impl Type<Postgres> for Term {
        fn type_info() -> PgTypeInfo {
            <i64 as Type<Postgres>>::type_info()
        }
    }

    impl Encode<'_, Postgres> for Term {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            <i64 as Encode<'_, Postgres>>::encode_by_ref(&i64::from(*self), buf)
        }
    }

    impl Decode<'_, Postgres> for Term {
        fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
            let raw = <i64 as Decode<'_, Postgres>>::decode(value)?;
            Ok(Term::try_from(raw)?)
        }
    }
}

#[cfg(feature = "postgres-types")]
mod postgres_types_impls {
    use std::error::Error;

    use bytes::BytesMut;
    use postgres_types::{FromSql, IsNull, ToSql, Type, accepts, to_sql_checked};

    use super::Term;

    impl ToSql for Term {
        fn to_sql(
            &self,
            ty: &Type,
            out: &mut BytesMut,
        ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
            i64::from(*self).to_sql(ty, out)
        }

        accepts!(INT8);
        to_sql_checked!();
    }

    impl<'a> FromSql<'a> for Term {
        fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
            Ok(Term::try_from(i64::from_sql(ty, raw)?)?)
        }

        accepts!(INT8);
    }
}
